"""`make bench`: digitsjax against what users would otherwise pick, measured side by side.

Every contender trains the same network (784-128-64-10 ReLU, Adam + cosine decay, batch 128,
mnist_mlp's 15 epochs unless `--epochs N`) on the same 55,000 images, in its own fresh process,
one after another on this machine. The table reports the steady-state epoch (median of epochs
2..N, evaluation excluded; the fastest in brackets), examples per second, the time from process
start to 97.8 % test accuracy, and ratios to digitsjax (the row "digitsjax mnist_mlp"), to the
arithmetic floor measured here, and to an epoch of the same matmuls alone (see flops.py).

The peers are those a user would pick on this backend, which a child process asks JAX for
(`--backend` overrides it): this process never starts a JAX backend, since on a GPU it would
hold memory the contenders need. On a CPU: digitsjax's pipelines, a plain JAX loop, PyTorch and
Keras 3, all float32. On a GPU: digitsjax at K = 1, 8, 64 and 512 models; at K = 1 with each of
its faster numerics (not deterministic, TF32, bfloat16, and TF32 without determinism, which is
what JAX does by default); a plain JAX loop (JAX's defaults, so TF32); PyTorch on CUDA, eager
and with torch.compile's CUDA graphs (both float32, PyTorch's default). Keras is left out on a
GPU: the bench's TensorFlow computes on the CPU there. A few epochs (`--epochs`) are enough on
a GPU, where process start and compilation take most of each run.

digitsjax runs mnist_mlp twice: the first run fills the persistent compilation cache (a first
run on a machine), the second reads it (every later run). Rows marked "1st run" compile from
scratch, so their time to the target includes compilation.

    python bench/run.py [--backend cpu|gpu] [--only SUBSTRING ...] [--epochs N] [--repeat N]
                        [--json results.json] [--list]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULT_PREFIX, T0_ENV, TARGET_ACCURACY, workload

HERE = Path(__file__).resolve().parent
MLP = "pipelines/mnist_mlp.toml"
FAST = "pipelines/mnist_fast.toml"
K = 8
NO_EPOCH_CHECKPOINTS = "digitsjax mnist_mlp, one checkpoint at the end"
REFERENCE = "digitsjax mnist_mlp"
DIGITSJAX = ["digitsjax_cli.py", "--pipeline", MLP]

# (label, script and arguments).
CPU_CONTENDERS = [
    ("digitsjax mnist_mlp, 1st run", DIGITSJAX),
    (REFERENCE, DIGITSJAX),
    (NO_EPOCH_CHECKPOINTS, [*DIGITSJAX, "--set", "checkpoint.every_epoch=false"]),
    ("digitsjax mnist_fast, 1st run", ["digitsjax_cli.py", "--pipeline", FAST]),
    ("digitsjax mnist_fast", ["digitsjax_cli.py", "--pipeline", FAST]),
    (f"digitsjax mnist_mlp K={K}, 1st run", [*DIGITSJAX, "--set", f"train.num_models={K}"]),
    ("plain JAX loop", ["plain_jax.py"]),
    ("PyTorch, index batching", ["torch_mlp.py", "--loader", "index"]),
    ("PyTorch, DataLoader", ["torch_mlp.py", "--loader", "dataloader"]),
    ("Keras 3 fit, TF backend", ["keras_fit.py", "--backend", "tensorflow"]),
    ("Keras 3 fit, JAX backend", ["keras_fit.py", "--backend", "jax"]),
]

GPU_MODEL_COUNTS = (8, 64, 512)
FAST_NUMERICS = "tensorfloat32 + deterministic=false"  # what JAX does on a GPU by default
NUMERICS = {  # the name in the label: the pipeline settings
    "deterministic=false": ["train.deterministic=false"],
    "tensorfloat32": ["train.matmul_precision=tensorfloat32"],
    "bfloat16": ["train.matmul_precision=bfloat16"],
    FAST_NUMERICS: ["train.matmul_precision=tensorfloat32", "train.deterministic=false"],
}
FAST_NUMERICS_LABEL = f"digitsjax mnist_mlp {FAST_NUMERICS}, 1st run"
TORCH_CUDA = ["torch_mlp.py", "--loader", "index", "--device", "cuda"]


def _sets(*overrides: str) -> list[str]:
    return [*DIGITSJAX, *(arg for override in overrides for arg in ("--set", override))]


GPU_CONTENDERS = [
    ("digitsjax mnist_mlp, 1st run", DIGITSJAX),
    (REFERENCE, DIGITSJAX),
    *[(f"digitsjax mnist_mlp K={k}, 1st run", _sets(f"train.num_models={k}"))
      for k in GPU_MODEL_COUNTS],
    *[(f"digitsjax mnist_mlp {name}, 1st run", _sets(*settings))
      for name, settings in NUMERICS.items()],
    ("plain JAX loop", ["plain_jax.py"]),
    ("PyTorch CUDA, index batching", TORCH_CUDA),
    ('PyTorch CUDA, torch.compile "reduce-overhead"', [*TORCH_CUDA, "--compile"]),
]
CONTENDERS = {"cpu": CPU_CONTENDERS, "gpu": GPU_CONTENDERS}


def detect_backend() -> tuple[str, str]:
    """JAX's default backend and first device kind, asked of a child process."""
    code = "import jax; print(jax.default_backend(), jax.devices()[0].device_kind)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0:
        sys.exit(f"cannot ask JAX for its backend: {proc.stderr.strip().splitlines()[-1:]}")
    backend, _, kind = proc.stdout.strip().splitlines()[-1].partition(" ")
    return backend, kind


def with_epochs(script: list[str], epochs: int | None) -> list[str]:
    """The contender's command, told to train `epochs` epochs if given."""
    if epochs is None:
        return script
    if script[0] == "digitsjax_cli.py":
        return [*script, "--set", f"train.epochs={epochs}"]
    return [*script, "--epochs", str(epochs)]


def run_contender(args: list[str], env: dict[str, str]) -> dict:
    env = {**env, T0_ENV: repr(time.time())}
    proc = subprocess.run([sys.executable, str(HERE / args[0]), *args[1:]], env=env,
                          capture_output=True, text=True, cwd=HERE.parent, timeout=900)
    results = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not results:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-15:])
        return {"error": f"exit status {proc.returncode}: {tail}"}
    return json.loads(results[-1].removeprefix(RESULT_PREFIX))


def steady_epoch(result: dict) -> float:
    """The median epoch after the first (which may include compilation or warm-up)."""
    return statistics.median(result["epoch_seconds"][1:] or result["epoch_seconds"])


def fastest(runs: list[dict]) -> dict:
    """The repeat with the fastest median epoch; an error only if every repeat failed."""
    finished = [r for r in runs if "error" not in r]
    return min(finished, key=steady_epoch) if finished else runs[0]


def best_epoch(result: dict) -> float:
    """The fastest epoch after the first: what the contender does when it has the cores."""
    return min(result["epoch_seconds"][1:] or result["epoch_seconds"])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=tuple(CONTENDERS),
                        help="whose peers to run (default: JAX's default backend here)")
    parser.add_argument("--only", action="append", default=[],
                        help="run only contenders whose label contains this (repeatable)")
    parser.add_argument("--epochs", type=int, metavar="N",
                        help="every contender trains N epochs (default: its pipeline's)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run the contenders N times, interleaved; each row is a "
                             "contender's repeat with the fastest median epoch")
    parser.add_argument("--json", type=Path, help="also write all results here")
    parser.add_argument("--list", action="store_true",
                        help="print the contenders' labels and commands; run nothing")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    backend, device_kind = (args.backend, None) if args.backend else detect_backend()
    if backend not in CONTENDERS:
        sys.exit(f"no contenders for JAX's {backend!r} backend; pass --backend cpu or gpu")
    chosen = [(label, with_epochs(script, args.epochs)) for label, script in CONTENDERS[backend]
              if not args.only or any(o in label for o in args.only)]
    if args.list:
        for label, script in chosen:
            print(f"{label}\n    python {shlex.join([f'bench/{script[0]}', *script[1:]])}")
        return

    load_before = os.getloadavg()
    floor = run_contender(["flops.py"], dict(os.environ))
    if "error" in floor:
        sys.exit(f"measuring the floors failed: {floor['error']}")
    runs = run_all(chosen, args.repeat)
    load_after = os.getloadavg()
    results = {label: fastest(label_runs) for label, label_runs in runs.items()}

    print(table(results, floors(floor)))
    print()
    for line in machine_lines(floor, device_kind, load_before, load_after):
        print(line)
    for line in notes(results):
        print(line)
    if args.repeat > 1:
        print(f"Median epochs of the {args.repeat} interleaved repeats (the table shows the "
              "fastest; a slower one had others' work on the machine):")
        for label, label_runs in runs.items():
            medians = ", ".join(f"{steady_epoch(r):.3f}" for r in label_runs if "error" not in r)
            print(f"  {label}: {medians}")
    if args.json:
        args.json.write_text(json.dumps({
            "backend": backend, "results": results, "runs": runs,
            "gemm_gflops": floor["gemm_gflops"], "flops_per_example": floor["flops_per_example"],
            "matmuls_alone_epoch_seconds": floor["matmuls_alone_epoch_seconds"],
            "load_average": [load_before, load_after]}, indent=1))


def run_all(chosen: list[tuple[str, list[str]]], repeat: int) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {label: [] for label, _ in chosen}
    for round_ in range(1, repeat + 1):
        # A fresh compilation cache each round, so that every "1st run" starts with none.
        cache = tempfile.mkdtemp(prefix="bench-jax-")
        env = {**os.environ, "DIGITSJAX_COMPILATION_CACHE": cache}
        for label, script in chosen:
            print(f"running {label} ({round_}/{repeat}) ...", file=sys.stderr, flush=True)
            runs[label].append(run_contender(script, env))
    return runs


def floors(floor: dict) -> dict[str, float]:
    """Seconds per example: the FLOP floor at the best GEMM rate, and the matmuls alone."""
    w = workload()
    return {"flops": floor["flops_per_example"] / (max(floor["gemm_gflops"].values()) * 1e9),
            "matmuls": floor["matmuls_alone_epoch_seconds"] / (w.steps_per_epoch * w.batch_size)}


def machine_lines(floor: dict, device_kind: str | None, load_before, load_after) -> list[str]:
    """What the floors are and what the machine was doing, under the table."""
    w = workload()
    rates, per_example = floor["gemm_gflops"], floor["flops_per_example"]
    sizes = ", ".join(f"{n}^3" for n in floor["gemm_sizes"])
    measured = ", ".join(f"{'NumPy' if name == 'numpy' else 'XLA'} {rate:.0f} GFLOP/s"
                         for name, rate in rates.items())
    epoch_floor = per_example / (max(rates.values()) * 1e9) * w.steps_per_epoch * w.batch_size
    lines = [f"Best float32 GEMM ({sizes}): {measured}; floor = {per_example:,} FLOP/example "
             f"(training matmuls) over {max(rates.values()):.0f} GFLOP/s = "
             f"{epoch_floor:.3f} s/epoch.",
             "The same matmuls alone, one epoch in one jitted scan: "
             f"{floor['matmuls_alone_epoch_seconds']:.3f} s."]
    if floor["backend"] != "cpu":
        lines.append(f"JAX's {floor['backend']} backend: {device_kind or floor['device_kind']}.")
    lines.append(f"{os.cpu_count()} CPUs; load average {load_before[0]:.1f} before, "
                 f"{load_after[0]:.1f} after (others' work on a shared machine makes timings "
                 "noisy).")
    return lines


def table(results: dict, floors: dict[str, float]) -> str:
    """The markdown table; `floors` are seconds per example (FLOP floor, matmuls alone)."""
    ref = results.get(REFERENCE, {})
    ref_epoch = steady_epoch(ref) if "epoch_seconds" in ref else None
    ref_target = ref.get("seconds_to_target")
    target = f"{100 * TARGET_ACCURACY:.1f}%"
    header = ("| contender | s/epoch (best) | examples/s | x digitsjax | x FLOP floor "
              f"| x matmuls alone | epochs to {target} | s to {target} | x digitsjax "
              "| final test acc |")
    lines = [header, "|---|" + "---:|" * (header.count("|") - 2)]
    for label, r in results.items():
        if "error" in r:
            lines.append(f"| {label} | failed: {r['error'].splitlines()[-1][:80]} |")
            continue
        epoch = steady_epoch(r)
        flop_floor, matmuls = (r["examples_per_epoch"] * floors[k] for k in ("flops", "matmuls"))
        reached = r["seconds_to_target"]
        epochs_to = next((i + 1 for i, a in enumerate(r["test_accuracy"])
                          if a >= TARGET_ACCURACY), None)
        lines.append(
            f"| {label} | {epoch:.3f} ({best_epoch(r):.3f}) "
            f"| {r['examples_per_epoch'] / epoch:,.0f} "
            f"| {_ratio(epoch, ref_epoch)} | {epoch / flop_floor:.2f} | {epoch / matmuls:.2f} "
            f"| {epochs_to or 'not reached'} | {f'{reached:.1f}' if reached else '-'} "
            f"| {_ratio(reached, ref_target)} | {100 * r['test_accuracy'][-1]:.2f}% |")
    return "\n".join(lines)


def _ratio(value: float | None, reference: float | None) -> str:
    return f"{value / reference:.2f}" if value and reference else "-"


def _finished(*results: dict | None) -> bool:
    return all(r and "error" not in r for r in results)


def notes(results: dict) -> list[str]:
    lines = []
    single = results.get(REFERENCE)
    for k in sorted({K, *GPU_MODEL_COUNTS}):
        many = results.get(f"digitsjax mnist_mlp K={k}, 1st run")
        if _finished(single, many):
            lines += models_note(single, many, k)
    without = results.get(NO_EPOCH_CHECKPOINTS)
    if _finished(single, without):
        cost = steady_epoch(single) - steady_epoch(without)
        lines.append(f"Checkpointing every epoch (orbax's async save overlaps the next epoch): "
                     f"{steady_epoch(single):.3f} s/epoch against {steady_epoch(without):.3f} s "
                     f"without, {cost:+.3f} s an epoch.")
    fast = results.get(FAST_NUMERICS_LABEL)
    if _finished(single, fast):
        ratio = steady_epoch(single) / steady_epoch(fast)
        lines.append(f"Deterministic float32 (the default) against {FAST_NUMERICS}: "
                     f"{steady_epoch(single):.3f} / {steady_epoch(fast):.3f} s/epoch = "
                     f"{ratio:.2f} x (target: at most 1.2 x).")
    for name in ("mnist_mlp", "mnist_fast"):
        first, second = results.get(f"digitsjax {name}, 1st run"), results.get(f"digitsjax {name}")
        if first and second and "params_sha256" in first and "params_sha256" in second:
            same = first["params_sha256"] == second["params_sha256"]
            lines.append(f"digitsjax {name}: params_sha256 {second['params_sha256'][:16]}... "
                         f"{'identical' if same else 'DIFFERENT'} in both runs "
                         "(compiled fresh, then read from the compilation cache).")
    return lines


def models_note(single: dict, many: dict, k: int) -> list[str]:
    """K models in one program against K separate runs of one."""
    ratio = steady_epoch(many) / (k * steady_epoch(single))
    whole = many["total_seconds"] / (k * single["total_seconds"])
    return [f"K={k} models in one program: {steady_epoch(many):.3f} s/epoch for all "
            f"{k} = {ratio:.2f} x the time of {k} separate runs "
            f"({k} x {steady_epoch(single):.3f} s); its accuracy is the ensemble's.",
            f"  Whole runs, process start to exit: {many['total_seconds']:.1f} s (its "
            f"1st run) = {whole:.2f} x {k} separate runs of {single['total_seconds']:.1f}"
            " s each."]


if __name__ == "__main__":
    main()
