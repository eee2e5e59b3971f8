# Set-up, tests and the main job. `make demo` and `make test` build ./.venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# This machine has these on disk; elsewhere pip fetches them (a CUDA build on x86_64 Linux).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup test demo bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e ".[dev]"
	touch $@

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) -m scripts.demo

bench: setup
	$(PY) scripts/bench_execute.py
	$(PY) scripts/bench_iou.py
	$(PY) scripts/bench_data.py
	$(PY) scripts/bench_train.py --config configs/sft_tiny.yaml

clean:
	rm -rf $(VENV) outputs results
