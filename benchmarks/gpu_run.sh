#!/usr/bin/env bash
# The GPU run, prepared: the device-relevant tests on CUDA, then the GPU memory benchmark.
#
#   benchmarks/gpu_run.sh RESULTS_DIR [--device cuda|cpu] [--tiny] [--tests-only|--bench-only]
#
# On the GPU machine (torch, transformers, sentence-transformers, pytest there; vocabprune runs
# from src/ on PYTHONPATH, nothing is installed):
#
#   benchmarks/gpu_run.sh gpu-results                  # under 8 minutes on one H200
#
# Dry run on a CPU with tiny shapes (what tests/test_gpu_run.py does):
#
#   benchmarks/gpu_run.sh /tmp/gpu-dry --device cpu --tiny
#
# Writes into RESULTS_DIR:
#   tests.xml   JUnit XML of every test marked `device` (run on the device; never stops at the
#               first failure), tests.tsv (one line per test: outcome, seconds, node id),
#               tests.log (pytest's output), tests.rc (its exit status);
#   gpu_memory.json, gpu_memory.md, gpu_memory.log: benchmarks/gpu_memory.py on the device
#               (every shape, full / vocabprune / oracle, fp32 and bf16, every LM head mode).
#   summary.txt what ran, for how long, and the counts.
# Exit status: 0 when every test passed and the benchmark wrote its JSON, 1 otherwise.
set -uo pipefail

usage() { sed -n '2,9p' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
out=$1
shift
device=cuda
tiny=()
tests=1
bench=1
while [ $# -gt 0 ]; do
    case $1 in
        --device) device=${2:?--device needs cuda or cpu}; shift 2 ;;
        --tiny) tiny=(--tiny); shift ;;
        --tests-only) bench=0; shift ;;
        --bench-only) tests=0; shift ;;
        *) echo "gpu_run.sh: unknown option $1" >&2; usage ;;
    esac
done
case $device in cuda|cuda:*|cpu) ;; *) echo "gpu_run.sh: --device must be cuda or cpu" >&2; exit 2 ;; esac

root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
cd "$root" || exit 2
PY=${PYTHON:-python3}  # on the GPU machine, python3 holds torch
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false VOCABPRUNE_TEST_DEVICE=$device
started=$(date +%s)
status=0
echo "gpu_run.sh on $(hostname) at $(date -u +%FT%TZ), device $device ${tiny[*]}" \
    | tee "$out/summary.txt"
"$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers",
transformers.__version__, "cuda", torch.cuda.is_available() and torch.cuda.get_device_name())' \
    >>"$out/summary.txt" 2>&1 || { echo "gpu_run.sh: $PY cannot import torch and transformers" \
    "(set PYTHON=...)" >&2; exit 2; }
tail -n 1 "$out/summary.txt"

if [ $tests = 1 ]; then
    # Every test marked `device` (they take the `device` fixture), from the files that have one:
    # the rest of the suite is not collected, so a package this machine lacks (trl) is no matter.
    t0=$(date +%s)
    mapfile -t files < <(grep -l "mark.device" tests/test_*.py)
    "$PY" -m pytest -m device -p no:cacheprovider -q -rfEs --continue-on-collection-errors \
        --junitxml="$out/tests.xml" "${files[@]}" >"$out/tests.log" 2>&1
    rc=$?
    echo $rc >"$out/tests.rc"
    "$PY" "$root/benchmarks/junit_table.py" "$out/tests.xml" >"$out/tests.tsv" || rc=1
    [ $rc = 0 ] || status=1
    echo "tests: exit $rc in $(( $(date +%s) - t0 )) s; $(tail -n 1 "$out/tests.log")" \
        | tee -a "$out/summary.txt"
fi

if [ $bench = 1 ]; then
    t0=$(date +%s)
    # Leave the tests' time out of the 8 minutes: the benchmark stops launching runs at 5.5.
    "$PY" benchmarks/gpu_memory.py --device "${device%%:*}" "${tiny[@]}" --max-minutes 5.5 \
        --out "$out/gpu_memory.json" >"$out/gpu_memory.md" 2>"$out/gpu_memory.log"
    rc=$?
    # Every configuration must have been measured: an error in one is recorded, not fatal, in
    # gpu_memory.py; here it makes the run's status 1 (and says how many).
    counts=$("$PY" -c 'import json, sys
runs = json.load(open(sys.argv[1]))["runs"]
bad = [r for r in runs if "error" in r]
print(f"{len(runs) - len(bad)} of {len(runs)} configurations measured")
sys.exit(1 if bad or not runs else 0)' "$out/gpu_memory.json" 2>&1) || rc=1
    [ $rc = 0 ] || status=1
    echo "gpu_memory: exit $rc in $(( $(date +%s) - t0 )) s; $counts" | tee -a "$out/summary.txt"
fi
echo "total $(( $(date +%s) - started )) s, status $status" | tee -a "$out/summary.txt"
exit $status
