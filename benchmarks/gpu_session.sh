#!/usr/bin/env bash
# Steps for a lent GPU machine (the device tool), to chain in one call of at most 10 minutes.
# The machine is bare and is given back 30 s after a call, so each call must bring back what it
# made: everything goes to $OUT (at most 8 files of 16 MiB). Prepare the checkout first with
# `bash benchmarks/gpu_tree.sh prepare camvid concrete-voc` and name "data" in `carry`.
# benchmarks/README.md "On a lent GPU" has the plan and the commands.
#
#   bash benchmarks/gpu_session.sh check                  # versions, GPU, the test suite
#   bash benchmarks/gpu_session.sh speed                  # issue 7's figures (complete, training)
#   bash benchmarks/gpu_session.sh train NAME MINUTES DATA [TRAIN OPTIONS...]   # --max-minutes MINUTES
#   bash benchmarks/gpu_session.sh evaluate NAME DATA [EVALUATE OPTIONS...]     # the run's best checkpoints
#   bash benchmarks/gpu_session.sh pack NAME               # those checkpoints, float16, in parts to $OUT
#
# Back here: cat NAME-mask-0.25.safetensors.part-* > mask-0.25.safetensors (see `pack`).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1  # the image has every dependency
OUT="${OUT:-runs/gpu-out}"
mkdir -p "$OUT"
lmae() { python3 -m lmae_repair "$@"; }
step="${1:-}"
shift || true

case "$step" in
  check)
    python3 -c "import torch, sys; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO GPU')"
    nvidia-smi -L || true
    python3 -m pytest -q -x -p no:cacheprovider tests 2>&1 | tee "$OUT/tests.log" | tail -5
    ;;
  speed)
    python3 benchmarks/complete_speed.py --devices cuda --presets tiny base --batch-sizes 32 128 \
      --sizes 480x360 500x375 2048x1024 --pairs 1024 --rw-pairs 2 2>&1 | tee "$OUT/complete_speed.log"
    python3 benchmarks/train_speed.py --device cuda --presets tiny base --batch-size 64 2>&1 | tee "$OUT/train_speed.log"
    ;;
  train)
    name="$1" minutes="$2"
    shift 2
    lmae train "$@" --max-minutes "$minutes" --out "runs/gpu/$name" 2>&1 | tee "$OUT/$name-train.log"
    ;;
  evaluate)
    name="$1"
    shift
    for best in runs/gpu/"$name"/mask-*/best.safetensors; do
      ratio=$(basename "$(dirname "$best")")
      lmae evaluate "$@" --models "$best" 2>&1 | grep -v "━" | tee -a "$OUT/$name-evaluate.log"
    done
    ;;
  pack)
    name="$1"
    for best in runs/gpu/"$name"/mask-*/best.safetensors; do
      ratio=$(basename "$(dirname "$best")")
      half="runs/gpu/$name-$ratio.safetensors"
      python3 -c "import sys; from lmae_repair.checkpoints import load_checkpoint, save_checkpoint; m, i = load_checkpoint(sys.argv[1]); save_checkpoint(sys.argv[2], m, i, half=True)" "$best" "$half"
      split -b 15M -d "$half" "$OUT/$name-$ratio.safetensors.part-"
      sha256sum "$half" | tee -a "$OUT/$name-sha256.txt"
    done
    tail -n +1 runs/gpu/"$name"/mask-*/history.jsonl > "$OUT/$name-history.txt"  # one block per ratio
    ls -la "$OUT"
    ;;
  *)
    echo "usage: bash $0 check | speed | train NAME MINUTES DATA [OPTIONS] | evaluate NAME DATA [OPTIONS] | pack NAME" >&2
    exit 2
    ;;
esac
