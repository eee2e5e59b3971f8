#!/usr/bin/env bash
# The study at GPU scale in one command (see scripts/gpu_study.py):
#   scripts/gpu_study.sh [--dry-run] [--only data,sft,sft-rag,dpo,grpo,eval] [--out results/gpu-DATE] [--tiny]
# 25 minutes of one H100 in stages of at most 9 minutes; each stage resumes, and is skipped once done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[[ -x $PY ]] || PY=python3
exec "$PY" -m scripts.gpu_study "$@"
