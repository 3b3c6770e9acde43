"""What a finished run shows people: the run folder's README.md (a model card), its loss.png, and the one line
the trainer ends with. Made from metrics.json's record (trainer/metrics.py); no torch here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data.snapshot import SnapshotManifest
from trainer.config import TrainConfig
from trainer.metrics import TrainMetrics


def summary(out: Path, metrics: TrainMetrics) -> str:
    """The line a finished run ends with: where the adapter is, the eval loss before → after, the time."""
    return (f"adapter written to {out} (eval loss {_fmt(metrics.eval_loss_before)} → "
            f"{_fmt(metrics.eval_loss_after)}, {metrics.wall_time_s or 0:.1f}s)")


def model_card(base: str, out: Path, cfg: TrainConfig, manifest: SnapshotManifest, metrics: TrainMetrics) -> str:
    """The run folder's README.md: base, data (hash and counts), hyper-parameters and the before/after eval."""
    examples = metrics.examples
    data_lines = [f"- snapshot sha256: `{manifest.sha256}`"]
    if manifest.source is not None:
        data_lines.append(f"- data file: `{manifest.source.file}` (sha256 `{manifest.source.sha256}`)")
    data_lines.append(f"- examples: {examples.train} train, {examples.eval} eval "
                      f"({examples.truncated} truncated, {examples.dropped} dropped)")
    hyper = {"lora_r": cfg.lora_r, "lora_alpha": int(cfg.lora_alpha), "lora_dropout": cfg.lora_dropout,
             "target_modules": cfg.target_modules, "qlora": cfg.qlora, "learning_rate": cfg.learning_rate,
             "lr_scheduler": cfg.lr_scheduler, "warmup_ratio": cfg.warmup_ratio, "batch_size": cfg.batch_size,
             "grad_accum": cfg.grad_accum, "max_length": cfg.max_length, "epochs": metrics.epochs,
             "steps": metrics.steps, "seed": cfg.seed, "batching": metrics.batching}
    rows = [("eval loss", metrics.eval_loss_before, metrics.eval_loss_after),
            ("token accuracy", metrics.token_accuracy_before, metrics.token_accuracy_after)]
    for name, before in (metrics.answers.get("before") or {}).items():
        after = (metrics.answers.get("after") or {}).get(name)
        if isinstance(before, int | float) and isinstance(after, int | float):
            rows.append((f"answers: {name}", before, after))
    lines = [
        "---", f"base_model: {base}", "library_name: peft", "tags:", "- lora", "- loraloop", "---", "",
        f"# {out.resolve().name}", "",
        f"A LoRA adapter for `{base}`, trained by loraloop on {metrics.device or '?'} "
        f"in {metrics.wall_time_s or 0:.0f}s.", "",
        "## Data", "", *data_lines, "",
        "## Hyper-parameters", "", "| setting | value |", "|---|---|",
        *(f"| {k} | {v} |" for k, v in hyper.items()), "",
        "## Evaluation (held-out split)", "", "| metric | base | adapter |", "|---|---|---|",
        *(f"| {name} | {_fmt(before)} | {_fmt(after)} |" for name, before, after in rows), "",
        "![loss](loss.png)", "",
    ]
    return "\n".join(lines)


def plot_loss(train_curve: list[dict[str, Any]], eval_curve: list[dict[str, Any]], path: Path,
              title: str | None = None, dpo: dict[str, Any] | None = None) -> None:
    """The SFT loss curves; after a DPO stage that ran, a second panel: its loss and reward accuracy per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if dpo and dpo.get("ran"):
        fig, (ax, ax_dpo) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
        _plot_dpo(ax_dpo, dpo)
    else:
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train_curve:
        ax.plot([p["step"] for p in train_curve], [p["loss"] for p in train_curve], label="train loss", lw=1)
    points = [p for p in eval_curve if p["eval_loss"] is not None]
    if points:
        ax.plot([p["step"] for p in points], [p["eval_loss"] for p in points], "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_dpo(ax: Any, dpo: dict[str, Any]) -> None:
    curve = dpo.get("train_curve") or []
    ax.plot([p["step"] for p in curve], [p["loss"] for p in curve], label="DPO train loss", lw=1)
    accuracy = [(p["step"], p["reward_accuracy"]) for p in curve if p.get("reward_accuracy") is not None]
    if accuracy:
        ax.plot(*zip(*accuracy, strict=True), lw=1, alpha=0.6, label="train reward accuracy")
    before, after = dpo.get("before") or {}, dpo.get("after") or {}
    steps = dpo.get("steps") or 0
    for key, label in (("loss", "held-out DPO loss"), ("reward_accuracy", "held-out reward accuracy")):
        if before.get(key) is not None and after.get(key) is not None:
            ax.plot([0, steps], [before[key], after[key]], "o--", label=label)
    ax.set_title(f"DPO (β {dpo.get('beta')}, {dpo['pairs']['train']} pairs)")
    ax.set_xlabel("DPO step")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
