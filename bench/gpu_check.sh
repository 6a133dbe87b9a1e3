#!/usr/bin/env bash
# Every check a GPU host is for, in one run of about 10 minutes (a few more with several GPUs),
# each step time-bounded:
#   1. three runs of mnist_mlp (a fresh compile, a compilation-cache write, a cache read) with
#      the default numerics, then with JAX's own GPU numerics (TF32, not deterministic);
#   2. the test suite, in parallel when pytest-xdist is there;
#   3. `make bench`'s GPU table with few epochs;
#   4. a sweep of 1,024 mnist_mlp points x 15 epochs in one program on one GPU
#      (bench/sweep_cost.py);
#   5. on a host with several GPUs, the same sweep split over all of them, and whether
#      lr_sweep's 32 points (1 epoch) end at their one-GPU fingerprints there; on one GPU, a
#      line says it is skipped;
#   6. where such a program's time goes, phase by phase, over 3 epochs of the whole data
#      (bench/sweep_bookkeeping.py).
# Logs go to $OUT (default ./gpu-check-out); fingerprints.txt is the summary of every step.
#
# A GPU host that reaches no network needs MNIST, the runtime packages its image lacks and the
# test tools carried to it. Here, with network:
#   bash bench/gpu_check.sh --prepare     # fills gpu-carry/ (.gitignore keeps it out of git)
# There, from the repository root, with gpu-carry/ beside the checkout's files:
#   bash bench/gpu_check.sh
# PYTHON (default python3), PYTEST_ARGS (default tests), BENCH_ARGS (default --epochs 3) and
# SWEEP_POINTS (default 1024) adjust it; NO_INSTALL=1 uses the environment as it is (e.g. to
# try it out on a CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY=$PWD/gpu-carry
# What the GPU image (jax with CUDA, optax, orbax, matplotlib, Pillow; no network) lacks. A run
# imports tqdm, and tensorboardX for its event files (without it, a run trains on and says so
# once); tensorboardX needs protobuf, which orbax-checkpoint brings: the carried wheel is only
# installed where the image's does not do. The suite needs hypothesis, pytest and pytest-xdist
# (an image's own pytest is kept). The versions are constraints.txt's.
RUNTIME_WHEELS="tensorboardX tqdm"
RUNTIME_DEPENDENCIES="protobuf"
SUITE_WHEELS="hypothesis pytest pytest-xdist"
SUITE_DEPENDENCIES="sortedcontainers execnet iniconfig pluggy packaging"
IMAGE_PYTHON=${IMAGE_PYTHON:-3.12}  # the image's Python: hypothesis and protobuf are built for it
PY=${PYTHON:-python3}
POINTS=${SWEEP_POINTS:-1024}
FIRST_GPU=${CUDA_VISIBLE_DEVICES:-0}
FIRST_GPU=${FIRST_GPU%%,*}  # "one GPU" is the first this process may use

prepare() {
    local arrays=.cache/tensorflow_datasets/mnist/3.0.1
    mkdir -p "$CARRY/mnist" "$CARRY/tfds/mnist/3.0.1" "$CARRY/wheels"
    cp "${DIGITSJAX_MNIST_DIR:-../shared/data/mnist}"/{*.gz,SHA256SUMS} "$CARRY/mnist/"
    cp "$arrays"/digitsjax-arrays.{npz,json} "$CARRY/tfds/mnist/3.0.1/"  # made by make test
    # shellcheck disable=SC2086
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: -c constraints.txt \
        --python-version "$IMAGE_PYTHON" --implementation cp --platform manylinux2014_x86_64 \
        --dest "$CARRY/wheels" $RUNTIME_WHEELS $RUNTIME_DEPENDENCIES $SUITE_WHEELS \
        $SUITE_DEPENDENCIES || { echo "pip download failed: see its message"; return 1; }
    ls "$CARRY/wheels"
    du -sh "$CARRY"
}

install_carried() {  # what the image lacks, from the carried wheels; what it has is kept
    # shellcheck disable=SC2086
    "$PY" -m pip install --quiet --no-index --find-links "$CARRY/wheels" $RUNTIME_WHEELS ||
        echo "tensorboardX or tqdm not installed (see pip's message): runs need tqdm"
    # shellcheck disable=SC2086
    "$PY" -m pip install --quiet --no-index --find-links "$CARRY/wheels" $SUITE_WHEELS ||
        echo "hypothesis, pytest or pytest-xdist not installed (see pip's message)"
    "$PY" -m pip install --quiet --no-deps -e .
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
    [ -z "${NO_INSTALL:-}" ] && install_carried
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
    CUDA_VISIBLE_DEVICES=$FIRST_GPU timeout 150 "$PY" bench/sweep_cost.py --points "$POINTS" \
        > "$OUT/sweep.txt" 2>&1
    echo "sweep of $POINTS points on one device exit $?:" \
         "$(grep 'launch to exit' "$OUT/sweep.txt")" | tee -a "$OUT/fingerprints.txt"
    several_devices | tee -a "$OUT/fingerprints.txt"
    timeout 90 "$PY" bench/sweep_bookkeeping.py --examples 0 > "$OUT/bookkeeping.txt" 2>&1
    echo "bookkeeping exit $?: $(grep '| total' "$OUT/bookkeeping.txt")" | \
        tee -a "$OUT/fingerprints.txt"
}

several_devices() {  # step 5: the sweeps split over every GPU, beside one GPU
    local devices
    devices=$("$PY" -c 'import jax; print(jax.device_count())' 2>/dev/null || echo 1)
    if ! [ "$devices" -gt 1 ] 2>/dev/null; then
        echo "several devices: skipped, this host has ${devices:-1} device(s)"
        return
    fi
    local all=$OUT/sweep-all-devices.txt
    timeout 150 "$PY" bench/sweep_cost.py --points "$POINTS" > "$all" 2>&1
    echo "sweep of $POINTS points over $devices devices exit $?:" \
         "$(grep -m1 '^placement: ' "$all") |" \
         "$(seconds_of "$all") s from launch to exit, on one device" \
         "$(seconds_of "$OUT/sweep.txt") s"
    local runs
    runs=$(mktemp -d /tmp/gpu-check-sweeps.XXXXXX)
    CUDA_VISIBLE_DEVICES=$FIRST_GPU small_sweep "$runs/one" > "$OUT/small-sweep-one.log" 2>&1
    small_sweep "$runs/all" > "$OUT/small-sweep-all.log" 2>&1
    echo "lr_sweep x 1 epoch, $(placement_of "$OUT/small-sweep-all.log"):" \
         "$(same_fingerprints "$runs/one" "$runs/all") points at their one-device fingerprint"
}

small_sweep() {  # WORKDIR: lr_sweep's 32 points for 1 epoch
    timeout 120 "$PY" -m digitsjax sweep pipelines/lr_sweep.toml --set train.epochs=1 \
        --workdir "$1"
}

seconds_of() {  # sweep_cost.py's table: the seconds from launch to exit
    grep 'launch to exit' "$1" | awk -F'|' '{gsub(/ /, "", $3); print $3}'
}

placement_of() {  # a run's log: how its models were placed, from its first line
    grep -m1 ' backend, ' "$1" | sed -E 's/^[^:]*: //; s/, matmul_precision.*//'
}

same_fingerprints() {  # SWEEPDIR SWEEPDIR: "N of M", points with equal params_sha256
    "$PY" - "$1" "$2" <<'PYTHON' 2>&1 | tail -1
import json, sys
one, other = ([p["params_sha256"] for p in json.load(open(f"{d}/sweep-results.json"))["points"]]
              for d in sys.argv[1:])
print(f"{sum(a == b for a, b in zip(one, other, strict=True))} of {len(one)}")
PYTHON
}

if [ "${1:-}" = --prepare ]; then prepare; else check; fi
