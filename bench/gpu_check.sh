#!/usr/bin/env bash
# Every check a GPU host is for, in one run of about 10 minutes, each step time-bounded:
#   1. three runs of mnist_mlp (a fresh compile, a compilation-cache write, a cache read) with
#      the default numerics, then with JAX's own GPU numerics (TF32, not deterministic);
#   2. the test suite, in parallel when pytest-xdist is there;
#   3. `make bench`'s GPU table with few epochs;
#   4. a sweep of 1,024 mnist_mlp points x 15 epochs in one program (bench/sweep_cost.py);
#   5. where such a program's time goes, phase by phase, over 3 epochs of the whole data
#      (bench/sweep_bookkeeping.py).
# Logs go to $OUT (default ./gpu-check-out); fingerprints.txt is the summary of step 1.
#
# A GPU host that reaches no network needs MNIST and the test tools carried to it. Here:
#   bash bench/gpu_check.sh --prepare     # fills gpu-carry/ (.gitignore keeps it out of git)
# There, from the repository root, with gpu-carry/ beside the checkout's files:
#   bash bench/gpu_check.sh
# PYTHON (default python3), PYTEST_ARGS (default tests) and BENCH_ARGS (default --epochs 3)
# adjust it; NO_INSTALL=1 uses the environment as it is (e.g. to try it out on a CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY=$PWD/gpu-carry
CARRIED_WHEELS="tensorboardX tqdm hypothesis sortedcontainers attrs pytest-xdist execnet"
PY=${PYTHON:-python3}

prepare() {
    local arrays=.cache/tensorflow_datasets/mnist/3.0.1
    mkdir -p "$CARRY/mnist" "$CARRY/tfds/mnist/3.0.1" "$CARRY/wheels"
    cp "${DIGITSJAX_MNIST_DIR:-../shared/data/mnist}"/{*.gz,SHA256SUMS} "$CARRY/mnist/"
    cp "$arrays"/digitsjax-arrays.{npz,json} "$CARRY/tfds/mnist/3.0.1/"  # made by make test
    # What the GPU image lacks, all pure Python: tensorboardX for every run's event files
    # (a run without it trains on and says so once), the rest for the test suite.
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --dest "$CARRY/wheels" $CARRIED_WHEELS
    du -sh "$CARRY"
}

three_runs() {  # LABEL [--set ...]: fingerprints of a fresh compile, a cache write, a cache read
    local label=$1 cache=/tmp/gpu-check-cache-$1 mode log
    shift
    rm -rf "$cache"
    for mode in fresh write read; do
        log=$OUT/run-$label-$mode.log
        DIGITSJAX_COMPILATION_CACHE=$([ "$mode" = fresh ] && echo off || echo "$cache") \
            timeout 180 "$PY" -m digitsjax train pipelines/mnist_mlp.toml --restart \
            --workdir "/tmp/gpu-check-runs/$label-$mode" "$@" > "$log" 2>&1
        echo "$label $mode: $(head -1 "$log" | cut -c1-90) |" \
             "$(grep -o 'test [0-9.]* [0-9.]*%' "$log" | tail -1) |" \
             "$(grep -o 'params_sha256 [0-9a-f]*' "$log" | tail -1)"
    done
}

check() {
    OUT=${OUT:-$PWD/gpu-check-out}
    mkdir -p "$OUT"
    if [ -z "${NO_INSTALL:-}" ]; then
        # shellcheck disable=SC2086
        "$PY" -m pip install --quiet --no-deps --no-index --find-links "$CARRY/wheels" \
            $CARRIED_WHEELS || echo "not every carried wheel installed: see pip's message"
        "$PY" -m pip install --quiet --no-deps -e .
    fi
    [ -d "$CARRY/mnist" ] && export DIGITSJAX_MNIST_DIR=$CARRY/mnist TFDS_DATA_DIR=$CARRY/tfds
    export XLA_PYTHON_CLIENT_PREALLOCATE=false  # parallel test processes share the GPU
    { nvidia-smi; "$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())'
      "$PY" -m pip list 2>/dev/null | grep -iE '^(jax|optax|orbax|numpy|torch|tensorflow|pytest)'
    } > "$OUT/environment.txt" 2>&1
    { three_runs defaults
      three_runs jax-gpu-numerics --set train.matmul_precision=tensorfloat32 \
          --set train.deterministic=false
    } | tee "$OUT/fingerprints.txt"
    local parallel=()
    "$PY" -c 'import xdist' 2>/dev/null && parallel=(-n 8)
    # shellcheck disable=SC2086
    timeout 300 "$PY" -m pytest -q -p no:cacheprovider "${parallel[@]}" ${PYTEST_ARGS:-tests} \
        > "$OUT/pytest.log" 2>&1
    echo "pytest exit $?: $(tail -1 "$OUT/pytest.log")" | tee -a "$OUT/fingerprints.txt"
    # shellcheck disable=SC2086
    timeout 240 "$PY" bench/run.py ${BENCH_ARGS:---epochs 3} --json "$OUT/bench.json" \
        > "$OUT/bench.txt" 2>&1
    echo "bench exit $?" | tee -a "$OUT/fingerprints.txt"
    timeout 150 "$PY" bench/sweep_cost.py --points 1024 > "$OUT/sweep.txt" 2>&1
    echo "sweep exit $?: $(grep 'launch to exit' "$OUT/sweep.txt")" | tee -a "$OUT/fingerprints.txt"
    timeout 90 "$PY" bench/sweep_bookkeeping.py --examples 0 > "$OUT/bookkeeping.txt" 2>&1
    echo "bookkeeping exit $?: $(grep '| total' "$OUT/bookkeeping.txt")" | \
        tee -a "$OUT/fingerprints.txt"
}

if [ "${1:-}" = --prepare ]; then prepare; else check; fi
