#!/usr/bin/env bash
# `tipslab bench step` on a GPU machine that has PyTorch and timm but neither MLflow nor Ray (a lent
# GPU box, a fresh node): each job runs in its own process, its result goes to a file, and the
# results are logged to MLflow back where MLflow is.
#
#   here:  tipslab bench step --sizes B --device cuda --compile --batch-size 256 --write-jobs bench-jobs
#   there: infra/bench-step-gpu.sh bench-jobs/*.json        # results in $OUT (default: bench-results)
#   here:  tipslab bench step --import bench-results/*.json  # now `tipslab plan` uses them
#
# There, tipslab must import: installed, or this checkout with omegaconf on PYTHONPATH (the script
# links the checkout as `tipslab` when it is not installed).
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
if ! python3 -c "import tipslab" 2>/dev/null; then
  link=$(mktemp -d)
  ln -s "$root" "$link/tipslab"
  export PYTHONPATH=$link${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
out=${OUT:-bench-results}
mkdir -p "$out"
log=$out/log.txt
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,memory.used --format=csv 2>&1 | tee -a "$log"
python3 - <<'PY' 2>&1 | tee -a "$log"
import timm, torch
from tipslab.jobs.bench.step import matmul_peak
print("torch", torch.__version__, "timm", timm.__version__)
if torch.cuda.is_available():
    print("measured bf16 8192^3 matmul: %.1f TFLOP/s" % (matmul_peak(torch.device("cuda"), torch.bfloat16, 8192) / 1e12))
PY
for job in "$@"; do
  name=$(basename "$job" .json)
  echo "== $name $(date +%T)" | tee -a "$log"
  timeout "${JOB_TIMEOUT:-600}" python3 -m tipslab.jobs.bench.step "$(cat "$job")" >"$out/$name.json" 2>>"$log"
  echo "exit $?" | tee -a "$log"
  python3 - "$out/$name.json" <<'PY' 2>&1 | tee -a "$log"
import json, sys
lines = open(sys.argv[1]).read().splitlines()
if lines:
    r = json.loads(lines[-1])
    how = f"compiled ({r.get('compile_mode') or 'default'})" if r["compile"] else "eager"
    extra = "".join([", activation checkpointing" if r.get("activation_checkpointing") else "",
                     f", loss chunks of {r['chunk_rows']} rows" if r.get("chunk_rows") else ""])
    print(f"{r['model_size']} batch {r['batch_size']} {how}{extra}: {r['images_per_s']:.1f} images/s, "
          f"MFU {100 * r['mfu']:.1f}% of {r['peak_flops'] / 1e12:.0f} TFLOP/s ({r['device']}), "
          f"peak {r.get('peak_gpu_mem_gb') or 0:.1f} GB")
    if not r["compile"]:
        print("  ms:", {k[:-2]: round(v * 1e3, 2) for k, v in r.items() if k.endswith("_s") and k[:-2] in (
            "data_to_device", "student_fwd", "text_fwd", "teacher_fwd", "losses", "backward", "optimizer", "ema")})
PY
done
