"""Ollama's options, checked once by one typed model (deploy/options.py) with Ollama's own rule: what its Go decoding
of api.Options takes (Options.FromMap), whoever asks — the settings, DeployConfig or the deploy before a create."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bot.settings import Settings
from deploy.config import DeployConfig
from deploy.ollama import OllamaClient, OllamaError
from deploy.options import OllamaOptions, check_options, option_type_error
from tests.harness.ollama_server import OllamaTestServer

HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("options", [{"num_predict": 1024.0}, {"num_batch": 512}])
async def test_what_the_two_old_checkers_disagreed_on_is_decided_by_ollama(
    options: dict[str, float], ollama_server: OllamaTestServer, tmp_path: Path
) -> None:
    # One checker refused these (1024.0 "not an integer", num_batch "not a sampling option"), the other passed them.
    # Ollama takes both: JSON numbers decode to float64, which an int field takes; num_batch is a Runner option.
    assert option_type_error(options) is None
    check_options(options, "serve_options")
    assert DeployConfig(model_name="m", ollama_base="b", serve_options=options).serve_options == options
    assert Settings(home=tmp_path, serve_options=options).serve_options == options
    ollama_server.add_scripted_model("m:1", reply="ok")
    async with OllamaClient(ollama_server.url) as client:
        await client.create("typed:1", from_="m:1", parameters=options)
        assert await client.chat("typed:1", HI) == "ok"  # the daemon serves it, stored or sent per request
        assert await client.chat("m:1", HI, options) == "ok"


def test_every_checker_refuses_what_ollama_refuses_with_its_message(tmp_path: Path) -> None:
    refused = {
        "temperature": ("0.7", 'option "temperature" must be of type float32', "must be a number"),
        "num_ctx": (True, 'option "num_ctx" must be of type integer', "must be an integer"),
        "seed": ("1", 'option "seed" must be of type integer', "must be an integer"),
        "use_mmap": (1, 'option "use_mmap" must be of type boolean', "must be true or false"),
    }
    for key, (value, ollama_says, settings_say) in refused.items():
        assert option_type_error({key: value}) == ollama_says
        with pytest.raises(ValueError, match=f"serve_options: {key} {settings_say}, not {value!r}"):
            check_options({key: value}, "serve_options")
        with pytest.raises(ValueError, match=f"{key} {settings_say}"):
            Settings(home=tmp_path, serve_options={key: value})
        with pytest.raises(ValueError, match=f"gate_options: {key} {settings_say}"):
            DeployConfig(model_name="m", ollama_base="b", gate_options={key: value})
    assert option_type_error({"stop": "<|im_end|>"}) == 'option "stop" must be an array of strings'
    # The first wrong one in the order given; keys Ollama does not know it ignores, and so does this message.
    assert option_type_error({"top_k": 40, "num_ctx": "big", "temperature": "hot"}) == \
        'option "num_ctx" must be of type integer'
    assert option_type_error({"temperature": 1, "num_ctx": 2048.0, "stop": ["x"], "unknown": "ignored"}) is None


def test_what_loraloop_refuses_beyond_ollama() -> None:
    # Ollama would cut 4096.5 to 4096 without a word, and ignore an unknown key (a typo) the same way.
    assert option_type_error({"num_ctx": 4096.5}) == 'option "num_ctx" must be of type integer (Ollama would cut ' \
                                                     '4096.5 to 4096)'
    with pytest.raises(ValueError, match=r"serve_options: num_ctx must be a whole number, not 4096\.5"):
        check_options({"num_ctx": 4096.5}, "serve_options")
    with pytest.raises(ValueError, match="'temprature' is not an option Ollama knows; it would ignore it"):
        check_options({"temprature": 0.5}, "serve_options")
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        check_options({"temperature": float("nan")}, "serve_options")
    with pytest.raises(ValueError, match="'stop' is not a sampling option loraloop passes"):
        check_options({"stop": ["x"]}, "serve_options")  # the stop tokens are the chat template's


def test_the_model_holds_ollamas_keys_only() -> None:
    # api.Options of v0.13.0: Runner's keys and the predict keys; ollama-python's Options lists more (numa, f16_kv,
    # mirostat, …) that this Ollama reads no longer.
    assert set(OllamaOptions.model_fields) == {
        "num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread", "num_keep", "seed", "num_predict",
        "top_k", "top_p", "min_p", "typical_p", "repeat_last_n", "temperature", "repeat_penalty",
        "presence_penalty", "frequency_penalty", "stop",
    }
    assert OllamaOptions.model_validate({"num_predict": 1024.0, "temperature": 1}).num_predict == 1024


async def test_the_test_server_refuses_as_the_model_says(ollama_server: OllamaTestServer) -> None:
    ollama_server.add_scripted_model("m:1", reply="ok")
    async with OllamaClient(ollama_server.url) as client:
        for options in ({"temperature": "0.7"}, {"num_ctx": "big"}):
            with pytest.raises(OllamaError) as err:
                await client.chat("m:1", HI, options)
            assert err.value.status == 500 and err.value.message == f"Ollama error: {option_type_error(options)}"


def test_the_settings_check_imports_neither_the_gate_nor_an_http_client(tmp_path: Path) -> None:
    code = ("import sys; from bot.settings import Settings; "
            f"Settings(home={str(tmp_path)!r}, serve_options={{'temperature': 0.2, 'num_ctx': 8192}}); "
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'httpx') "
            "or m in ('deploy.gate', 'deploy.pipeline', 'deploy.candidate', 'deploy.promotion', 'deploy.ollama')); "
            "assert 'deploy.options' in sys.modules and not loaded, loaded")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
