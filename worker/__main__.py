"""``python -m worker``: serve retrain jobs from Redis on this (GPU) host, one at a time.

The GPU image's entry point: it loads the worker's settings and the worker, never the bot's command line (which
brings the database layer along). ``loraloop worker`` does the same from the bot's command line.
"""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from data.validation import describe
from worker.celery_app import WorkerCannotStart, check_redis, require_job_secret, run_worker
from worker.settings import load_worker_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--loglevel", default="INFO", help="Celery log level.")
    parser.add_argument("--check", action="store_true",
                        help="Check the job secret, Redis and the GPU, then exit (the image's health check; "
                             "`loraloop doctor` needs the bot's stack).")
    args = parser.parse_args(argv)
    try:
        settings = load_worker_settings()
    except ValidationError as exc:
        print(f"error: invalid settings: {describe(exc, root='settings')}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        require_job_secret(settings)
        check_redis(settings.redis_url)
    except WorkerCannotStart as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.check:
        return _check_gpu()
    run_worker(settings, args.loglevel)
    return 0


def _check_gpu() -> int:
    import torch

    if not torch.cuda.is_available():
        print("error: torch sees no CUDA GPU (check the NVIDIA Container Toolkit and the driver)", file=sys.stderr)
        return 1
    print(f"ok: Redis answers; GPU {torch.cuda.get_device_name(0)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
