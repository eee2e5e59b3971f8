#!/usr/bin/env bash
# Train the shipped model (configs/sft_gpu_ship.yaml) on a lent GPU machine that has PyTorch but
# no CadQuery, from renders packed here, inside one fixed wall-clock window:
#
#   here:  python -m scripts.pack_renders pack data/synth-train --split train --out PACK/train.pack.xz
#          python -m scripts.pack_renders pack data/synth-val --split validation --out PACK/val.pack.xz
#          cp -r <a run>/tokenizer PACK/tokenizer        # optional: keep that tokenizer
#   there: scripts/gpu_ship.sh PACK RESULTS [SECONDS] [key=value ...]  # SECONDS: the whole window (default 540)
#
# A GPU image with PyTorch, transformers, timm and accelerate but without `datasets` takes it as
# wheels in .whl/ (no network there; fetched here for its Python, 3.12 on the lent machines):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl datasets==5.2.0 "dill<0.4.2" "multiprocess<0.70.20"
#
# CONFIG picks the recipe (default configs/sft_gpu_ship.yaml; configs/sft_gpu_edit.yaml continues
# its model, named by init_from=, which must travel with the working tree); key=value pairs after
# SECONDS override the recipe.
# Steps: install the wheels in .whl/ (packages the machine lacks) when present (SKIP_WHEELS=1: not); unpack the renders
# (16 processes); measure the study's baseline-size training throughput (scripts/bench_train.py)
# while SFT prepares its data on the CPU; train until END_S seconds (default 50) before the window's
# end (stop_by: SFT fits its time budget and cosine schedule to the time left once its preparation is
# done, however long that took; the run is also interrupted at the window's end, and then its last
# checkpoint is what comes back); write to RESULTS: the final model in fp16 (split into
# parts of at most 15 MiB), its small files and TensorBoard events (small.tar), the logs and the
# benchmark JSON (SKIP_BENCH=1: no benchmark). Reassemble with: cat RESULTS/model.fp16.safetensors.part-* > model.safetensors
set -uo pipefail
PACK=${1:?pack folder}
RESULTS=${2:?results folder}
WINDOW=${3:-540}
END_S=${END_S:-50}
PY=${PYTHON:-python3}
CONFIG=${CONFIG:-configs/sft_gpu_ship.yaml}
T0=$(date +%s)
left() { echo $((WINDOW - ($(date +%s) - T0))); }
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_ship.log"
exec > >(tee -a "$LOG") 2>&1
cd "$(dirname "$0")/.."
if [[ ${SKIP_WHEELS:-0} != 1 ]] && compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
$PY -c "import torch, transformers, timm, datasets; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-', '| transformers', transformers.__version__, '| timm', timm.__version__, '| datasets', datasets.__version__)" || exit 1
DATA=/tmp/gpu_ship_data RUN=/tmp/gpu_ship_run
$PY -m scripts.pack_renders unpack "$PACK/train.pack.xz" --out $DATA/train --workers 16 &
UNPACK=$!
$PY -m scripts.pack_renders unpack "$PACK/val.pack.xz" --out $DATA/val --workers 4 || exit 1
wait $UNPACK || exit 1
echo "[gpu_ship] unpacked at $(( $(date +%s) - T0 )) s"
mkdir -p $RUN
[[ -d "$PACK/tokenizer" ]] && cp -r "$PACK/tokenizer" $RUN/tokenizer  # with --resume, sft keeps it
BENCH=
if [[ ${SKIP_BENCH:-0} != 1 ]]; then
  $PY scripts/bench_train.py --config configs/sft_gpu.yaml --batch 64 --tokens 512 --precision bf16 --steps 30 \
    --out "$RESULTS/bench_train_gpu_baseline.json" train_mode=full pretrained=false > "$RESULTS/bench_train.log" 2>&1 &
  BENCH=$!
fi
STOP_BY=$((T0 + WINDOW - END_S))
echo "[gpu_ship] training ends by $(date -d @$STOP_BY +%T) ($((STOP_BY - $(date +%s))) s from now, preparation included)"
timeout -s INT $(( $(left) - 25 )) $PY -m sft --config "$CONFIG" --resume train_data=$DATA/train \
  val_data=$DATA/val output_dir=$RUN max_minutes=null stop_by=$STOP_BY "${@:4}"
echo "[gpu_ship] sft exit $? at $(( $(date +%s) - T0 )) s"
[[ -n $BENCH ]] && wait $BENCH
# what comes back: the final model, else the last checkpoint's weights with the run's config
SRC=$RUN/final
[[ -f $SRC/model.safetensors ]] || SRC=$(ls -d $RUN/checkpoints/step-* 2>/dev/null | sort -t- -k2 -n | tail -1)
[[ -n "$SRC" && -f "$SRC/model.safetensors" ]] || { echo "[gpu_ship] no weights to bring back"; exit 1; }
$PY - "$SRC/model.safetensors" /tmp/model.fp16.safetensors <<'EOF'
import sys
from safetensors.torch import load_file, save_file
w = load_file(sys.argv[1])
save_file({k: v.half().contiguous() if v.is_floating_point() else v for k, v in w.items()}, sys.argv[2])
EOF
split -b 15M -d /tmp/model.fp16.safetensors "$RESULTS/model.fp16.safetensors.part-"
tar -cf "$RESULTS/small.tar" -C $RUN --exclude=model.safetensors --exclude=retrieval_index.npz --exclude='*.bin' \
  --exclude='*.pkl' --exclude='optimizer*' --exclude='scheduler*' --exclude='random_states*' --exclude=tokenizer \
  $(cd $RUN && ls -d final tensorboard config.yaml 2>/dev/null) $([[ $SRC == $RUN/final ]] || echo "${SRC#$RUN/}")
ls -la "$RESULTS"
echo "[gpu_ship] done at $(( $(date +%s) - T0 )) s"
