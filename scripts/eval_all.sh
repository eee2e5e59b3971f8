#!/usr/bin/env bash
# The study's evaluation harness: scripts/eval_all.sh MODEL_DIR [TEST_DATA] [DPO_MODEL_DIR]
#
# TEST_DATA: NAME=PATH or PATH, comma-separated for several sets (a GenCAD-Code snapshot folder,
# parquet, JSONL, or a cad.synth output); "hub" or nothing for the GenCAD-Code test split.
# Writes results/$RUN/ (table.md/csv/json, ablations, errors, plots, report.md); cached per sample,
# so an interrupted run resumes. Extra options for python -m scripts.eval_all go in EVAL_ARGS,
# e.g. EVAL_ARGS="--limit 100 --retrieval-data data/synth-train --run baseline".
set -euo pipefail
if [[ $# -lt 1 || $# -gt 3 ]]; then
  echo "usage: $0 MODEL_DIR [TEST_DATA] [DPO_MODEL_DIR]" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[[ -x $PY ]] || PY=python3
args=(--model "$1")
if [[ $# -ge 2 && -n $2 && $2 != hub ]]; then args+=(--data "$2"); fi
if [[ $# -ge 3 && -n $3 ]]; then args+=(--dpo-model "$3"); fi
# shellcheck disable=SC2086
exec "$PY" -m scripts.eval_all "${args[@]}" ${EVAL_ARGS:-}
