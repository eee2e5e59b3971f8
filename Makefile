# Set-up, tests and the main job. `make demo` and `make test` build ./.venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# This machine has these on disk; elsewhere pip fetches them (a CUDA build on x86_64 Linux).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup test demo demo-pipeline bench clean data train-baseline infer eval train-enhanced infer-enhanced eval-enhanced compare

# The study's pipeline; every path and recipe can be overridden: make eval MODEL=outputs/sft-cpu-small/final
TRAIN_DATA ?= data/synth-train
TEST_DATA ?= data/synth-test
SFT_CONFIG ?= configs/sft_baseline.yaml
DPO_CONFIG ?= configs/dpo.yaml
SFT_DIR ?= outputs/sft
MODEL ?= $(SFT_DIR)/final
PAIRS_DIR ?= outputs/pairs
DPO_DIR ?= outputs/dpo
DPO_MODEL ?= $(DPO_DIR)/final
PAIRS_ARGS ?= --limit 2000 --k 8 --margin 1.0
RESULTS ?= results
N ?= 6

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e ".[dev]"
	touch $@

test: setup
	$(PY) -m pytest -q

# The shipped model (models/img2cad-small) on the ten reference images and a few held-out synthetic ones.
demo: setup
	$(PY) -m scripts.demo_shipped --thorough

# The training pipeline end to end on CPU: synthetic data, SFT, pairs, DPO, evaluation harness.
demo-pipeline: setup
	$(PY) -m scripts.demo

bench: setup
	$(PY) scripts/bench_execute.py
	$(PY) scripts/bench_iou.py
	$(PY) scripts/bench_data.py
	$(PY) scripts/bench_train.py --config configs/sft_tiny.yaml

data: setup
	$(PY) -m cad.synth --n 47000 --out $(TRAIN_DATA) --seed 0
	$(PY) -m cad.synth --n 1000 --out $(TEST_DATA) --seed 1 --split test

# Baseline: SFT (the study's LoRA recipe; sft_cpu_small.yaml or sft_tiny.yaml for CPU), beam 4.
train-baseline: setup
	$(VENV)/bin/accelerate launch -m sft --config $(SFT_CONFIG) train_data=$(TRAIN_DATA) output_dir=$(SFT_DIR)

infer: setup
	$(PY) -m decoding --model $(MODEL) --data $(TEST_DATA) --strategy beam --out $(RESULTS)/infer/baseline.jsonl

eval: setup
	$(PY) -m reward.evaluate --pred $(RESULTS)/infer/baseline.jsonl --gt $(TEST_DATA) --iou both \
		--out $(RESULTS)/infer/baseline.eval.json

# Enhanced: preference pairs from the SFT model, DPO, then grammar + best-of-N + rerank decoding.
train-enhanced: setup
	$(PY) -m rl.pairs --model $(MODEL) --data $(TRAIN_DATA) $(PAIRS_ARGS) --out $(PAIRS_DIR)
	$(PY) -m rl.dpo --config $(DPO_CONFIG) sft_model=$(MODEL) pairs=$(PAIRS_DIR)/pairs output_dir=$(DPO_DIR)

infer-enhanced: setup
	$(PY) -m decoding --model $(DPO_MODEL) --data $(TEST_DATA) --strategy rerank --grammar --repair --n $(N) --k-retrieval 2 \
		--retrieval-data $(TRAIN_DATA) --out $(RESULTS)/infer/enhanced.jsonl

eval-enhanced: setup
	$(PY) -m reward.evaluate --pred $(RESULTS)/infer/enhanced.jsonl --gt $(TEST_DATA) --iou both \
		--out $(RESULTS)/infer/enhanced.eval.json

# Every configuration, ablations, error analysis, plots and report in $(RESULTS)/compare.
compare: setup
	EVAL_ARGS="--retrieval-data $(TRAIN_DATA) --n $(N) --run compare --results $(RESULTS)" \
		scripts/eval_all.sh $(MODEL) $(TEST_DATA) $(DPO_MODEL)

clean:
	rm -rf $(VENV) outputs results
