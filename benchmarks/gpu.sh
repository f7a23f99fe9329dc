#!/usr/bin/env bash
# The benchmarks on a lent GPU machine (H100/H200 with jax[cuda], scipy, scikit-learn; no network).
#
#   bash benchmarks/gpu.sh           # cifar10-zoo and big-zoo, every eigensolver: under 10 minutes
#   bash benchmarks/gpu.sh --quick   # the same steps on the tiny scenario: any machine, minutes
#
# Contenders (each in its own process; compile time = first call, apart from the medians):
# jax-device (the certified top-k PCA eigensolver, the default), jax-device-eigh (the full
# eigh it replaces), jax-device-tf32 / -bf16 (the top-k solver on a TF32 / bfloat16 scatter,
# refined on the exact one). Each prints its median, x floor, errors against the float64
# reference, the models whose eigensolver fell back to the full eigh, and the device's peak
# memory (memory_stats()["peak_bytes_in_use"]) beside the plan's estimate (_plan.fused_bytes).
# The last step times the solver itself against the full eigh at D = 512..4096.
#
# Nothing is installed: the checkout goes on PYTHONPATH. Features are generated on the host
# (all cores) into $NCTI_BENCH_CACHE, by default /dev/shm when it has room, so the 30 GB of
# features never touch the disk. jax-device times the zoo with its features already on the
# GPU (the target); jax, with memory-mapped host features. Every step prints as it goes and
# has its own time limit, so that one slow compilation cannot eat the session. Results go to
# $NCTI_BENCH_RESULTS (default benchmarks/results/) and, when $OUT is set, are copied there.
set -uo pipefail
cd "$(dirname "$0")/.."

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
results=${NCTI_BENCH_RESULTS:-benchmarks/results}
if [[ -z "${NCTI_BENCH_CACHE:-}" ]]; then
  shm_free=$(df -B1 --output=avail /dev/shm 2>/dev/null | tail -n 1)
  if (( ${shm_free:-0} > 40 * 10**9 )); then NCTI_BENCH_CACHE=/dev/shm/ncti-bench
  else NCTI_BENCH_CACHE=/tmp/ncti-bench; fi
fi

zoo=cifar10-zoo big=big-zoo quick=()
if [[ "${1:-}" == --quick ]]; then
  zoo=tiny big=tiny quick=(--quick)
fi
bench=("$python" -m benchmarks --cache "$NCTI_BENCH_CACHE" --out "$results" "${quick[@]}")

failed=0
step() {  # step SECONDS WHAT COMMAND...: runs COMMAND under its own time limit
  local limit=$1 what=$2 start=$SECONDS status
  shift 2
  echo "=== $what (limit ${limit} s, $(date -u +%T) UTC)"
  timeout -k 5 "$limit" "$@"
  status=$?
  (( status == 124 )) && echo "=== $what: TIMED OUT"
  echo "=== $what: exit status $status after $((SECONDS - start)) s"
  (( status == 0 )) || failed=1
}

stamp=$(mktemp)
# A CPU dry run (JAX_PLATFORMS=cpu) traces the accelerators' code path: fused, the top-k
# solver and its fallback call, instead of the CPU's float64 host path.
[[ "${JAX_PLATFORMS:-}" == cpu ]] && export NCTI_BENCH_DEVICE_NUMERICS=1
eig=(--dims 512,1024,2048,4096 --repeats 3)
[[ ${#quick[@]} -gt 0 ]] && eig=(--dims 256 --repeats 1)

step 20 "devices" "$python" -c "import jax; print(jax.__version__, jax.devices())"
step 45 "generate $zoo" "${bench[@]}" --generate-only --scenario "$zoo"
step 200 "bench $zoo" "${bench[@]}" --scenario "$zoo" --repeats 3 \
  --contenders jax-device,jax-device-eigh,jax-device-tf32,jax-device-bf16
step 90 "generate $big" "${bench[@]}" --generate-only --scenario "$big"
# 64 models in float64 on the host would take minutes: no untimed reference check here.
step 150 "bench $big" "${bench[@]}" --scenario "$big" --repeats 3 --no-check \
  --contenders jax-device,jax-device-eigh
step 120 "eigensolver timing" "$python" -m benchmarks.eigensolver --skip accuracy \
  "${eig[@]}" --out "$results"

if [[ -n "${OUT:-}" ]]; then
  find "$results" -maxdepth 1 -type f -newer "$stamp" -exec cp -v {} "$OUT"/ \;
fi
rm -f "$stamp"
exit "$failed"
