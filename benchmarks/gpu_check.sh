#!/usr/bin/env bash
# The GPU check (issue 14), on a machine with a CUDA GPU, in at most 10 minutes:
#
#   1. the GPU-marked tests            TRITON_INTERPRET=0 pytest -m gpu              (at most  80 s)
#   2. the kernel benchmark, bfloat16  benchmarks/kernels.py, T = 1K/4K/16K, fwd and fwd+bwd (110 s)
#   3. the kernel benchmark, float32   the same in float32                                   (110 s)
#   4. a search on CUDA                einsearch run --device cuda --precision bf16, 4 trials
#                                      sharing the GPU (0.25 each), a 230 s time budget   (285 s)
#
# then one summary table.  Each step runs under `timeout` (the search gets SIGINT first, so it
# stops cleanly and keeps its trials); a step that fails or runs out of time is marked in the
# table and the others still run.  Full outputs: <folder>/<step>.log; the search's run folder:
# <folder>/search.  Usage, from anywhere, in the project's environment:
#
#   benchmarks/gpu_check.sh [folder]        # default folder: gpu-check-<date>-<time>
#
# Without a CUDA device it says so in one line and exits with status 2, having run nothing.
set -u -o pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
    echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False in $PYTHON); nothing run" >&2
    exit 2
fi

OUT=${1:-gpu-check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
export OMP_WAIT_POLICY=PASSIVE
DEVICE=$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(), "· torch", torch.__version__, "· CUDA", torch.version.cuda)')
echo "gpu_check: $DEVICE; logs in $OUT" >&2

names=() statuses=() seconds=() results=()

# run_step NAME LIMIT_S SIGNAL COMMAND...: the command's output goes to $OUT/NAME.log
run_step() {
    local name=$1 limit=$2 signal=$3 start rc status
    shift 3
    echo "gpu_check: $name ..." >&2
    start=$(date +%s)
    timeout --signal="$signal" --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status="timeout (${limit}s)" ;;
        130) status="stopped (${limit}s)" ;;
        *) status="failed ($rc)" ;;
    esac
    names+=("$name") statuses+=("$status") seconds+=("$(($(date +%s) - start))")
}

kernel_summary() { # rows measured, and the median torch/triton ratio over them
    local rows ratios
    rows=$(awk '$2 ~ /^[0-9]+$/ && ($3 == "fwd" || $3 == "fwd+bwd")' "$1")
    if [ -z "$rows" ]; then echo "no rows measured"; return; fi
    ratios=$(printf '%s\n' "$rows" | awk '$7 ~ /^[0-9.]+$/ { print $7 }' | sort -g)
    printf '%s rows (ops x T x pass); median torch/triton %s\n' "$(printf '%s\n' "$rows" | wc -l)" \
        "$(printf '%s\n' "$ratios" | awk 'NF { r[n++] = $1 } END { print n ? r[int((n - 1) / 2)] : "-" }')"
}

run_step gpu-tests 80 TERM env TRITON_INTERPRET=0 "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider tests
results+=("$(grep -E '(passed|failed|error|skipped|no tests ran)' "$OUT/gpu-tests.log" | tail -n 1)")

for dtype in bfloat16 float32; do
    run_step "kernels-$dtype" 110 TERM env TRITON_INTERPRET=0 "$PYTHON" benchmarks/kernels.py --lengths 1024,4096,16384 --dtype "$dtype" --seconds 0.2
    results+=("$(kernel_summary "$OUT/kernels-$dtype.log")")
done

run_step search 285 INT "$PYTHON" -m einsearch.cli run --device cuda --precision bf16 --gpus-per-trial 0.25 --workers 4 \
    --task mqar --space full --seed-arch transformer --trials 1000 --time-budget 230s --finalists 0 --output "$OUT/search"
results+=("$("$PYTHON" - "$OUT/search" <<'EOF'
import collections, json, sys
from pathlib import Path
path = Path(sys.argv[1]) / "trials.jsonl"
records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
status = collections.Counter(r["status"] for r in records)
devices = sorted({r.get("device", "") for r in records if r.get("device")})
best = max((r for r in records if r["status"] == "ok"), key=lambda r: r["metrics"].get("val/accuracy", -1), default=None)
print(f"{len(records)} trials ({', '.join(f'{n} {s}' for s, n in status.items()) or 'none'}); on {', '.join(devices) or '?'}; "
      f"best val/accuracy {best['metrics'].get('val/accuracy', float('nan')):.3f}" if best else f"{len(records)} trials, none ok")
EOF
)")

echo
echo "GPU check on $DEVICE"
printf '%-18s %-16s %8s  %s\n' step status seconds result
printf '%-18s %-16s %8s  %s\n' ------------------ ---------------- -------- ------
for i in "${!names[@]}"; do
    printf '%-18s %-16s %8s  %s\n' "${names[$i]}" "${statuses[$i]}" "${seconds[$i]}" "${results[$i]}"
done
echo "full outputs (the kernel tables per op, T and pass): $OUT/*.log"
