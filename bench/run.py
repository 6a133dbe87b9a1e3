"""`make bench`: digitsjax against what users would otherwise pick, measured side by side.

Every contender trains the same network (784-128-64-10 ReLU, Adam + cosine decay, batch 128,
float32, mnist_mlp's 15 epochs) on the same 55,000 images, in its own fresh process, one after
another on this machine. The table reports the steady-state epoch (median of epochs 2..N,
evaluation excluded; the fastest in brackets), examples per second, the time from process
start to 97.8 % test accuracy, and ratios to digitsjax, to the arithmetic floor measured here,
and to an epoch of the same matmuls alone (see flops.py).

    python bench/run.py [--only SUBSTRING ...] [--repeat N] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULT_PREFIX, T0_ENV, TARGET_ACCURACY, workload
from flops import gemm_gflops, matmul_only_epoch_seconds, training_flops_per_example

HERE = Path(__file__).resolve().parent
MLP = "pipelines/mnist_mlp.toml"
FAST = "pipelines/mnist_fast.toml"
K = 8
NO_EPOCH_CHECKPOINTS = "digitsjax mnist_mlp, one checkpoint at the end"

# (label, script and arguments). digitsjax runs each pipeline twice: the first run fills the
# persistent compilation cache (a first run on a machine), the second reads it (every later run).
CONTENDERS = [
    ("digitsjax mnist_mlp, 1st run", ["digitsjax_cli.py", "--pipeline", MLP]),
    ("digitsjax mnist_mlp", ["digitsjax_cli.py", "--pipeline", MLP]),
    (NO_EPOCH_CHECKPOINTS,
     ["digitsjax_cli.py", "--pipeline", MLP, "--set", "checkpoint.every_epoch=false"]),
    ("digitsjax mnist_fast, 1st run", ["digitsjax_cli.py", "--pipeline", FAST]),
    ("digitsjax mnist_fast", ["digitsjax_cli.py", "--pipeline", FAST]),
    (f"digitsjax mnist_mlp K={K}, 1st run",
     ["digitsjax_cli.py", "--pipeline", MLP, "--set", f"train.num_models={K}"]),
    ("plain JAX loop", ["plain_jax.py"]),
    ("PyTorch, index batching", ["torch_mlp.py", "--loader", "index"]),
    ("PyTorch, DataLoader", ["torch_mlp.py", "--loader", "dataloader"]),
    ("Keras 3 fit, TF backend", ["keras_fit.py", "--backend", "tensorflow"]),
    ("Keras 3 fit, JAX backend", ["keras_fit.py", "--backend", "jax"]),
]
REFERENCE = "digitsjax mnist_mlp"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[],
                        help="run only contenders whose label contains this (repeatable)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run the contenders N times, interleaved; each row is a "
                             "contender's repeat with the fastest median epoch")
    parser.add_argument("--json", type=Path, help="also write all results here")
    args = parser.parse_args()
    chosen = [c for c in CONTENDERS if not args.only or any(o in c[0] for o in args.only)]

    load_before = os.getloadavg()
    rates = gemm_gflops()
    peak = max(rates.values())
    w = workload()
    sizes = (784, *w.hidden, 10)
    flops_per_example = training_flops_per_example(sizes)
    matmuls_alone = matmul_only_epoch_seconds(sizes, w.batch_size, w.steps_per_epoch)
    floors = {"flops": flops_per_example / (peak * 1e9),
              "matmuls": matmuls_alone / (w.steps_per_epoch * w.batch_size)}  # s per example

    runs: dict[str, list[dict]] = {label: [] for label, _ in chosen}
    for repeat in range(1, args.repeat + 1):
        # A fresh compilation cache each round, so that every "1st run" starts with none.
        cache = tempfile.mkdtemp(prefix="bench-jax-")
        env = {**os.environ, "DIGITSJAX_COMPILATION_CACHE": cache}
        for label, script in chosen:
            print(f"running {label} ({repeat}/{args.repeat}) ...", file=sys.stderr, flush=True)
            runs[label].append(run_contender(script, env))
    load_after = os.getloadavg()
    results = {label: fastest(label_runs) for label, label_runs in runs.items()}

    print(table(results, floors))
    print()
    print(f"Best float32 GEMM (1024^3, 2048^3): NumPy {rates['numpy']:.0f} GFLOP/s, XLA "
          f"{rates['jax']:.0f} GFLOP/s; floor = {flops_per_example:,} FLOP/example "
          f"(training matmuls) over {peak:.0f} GFLOP/s = "
          f"{floors['flops'] * w.steps_per_epoch * w.batch_size:.3f} s/epoch.")
    print(f"The same matmuls alone, one epoch in one jitted scan: {matmuls_alone:.3f} s.")
    print(f"{os.cpu_count()} CPUs; load average {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after (others' work on a shared machine makes timings noisy).")
    for line in notes(results):
        print(line)
    if args.repeat > 1:
        print(f"Median epochs of the {args.repeat} interleaved repeats (the table shows the "
              "fastest; a slower one had others' work on the machine):")
        for label, label_runs in runs.items():
            medians = ", ".join(f"{steady_epoch(r):.3f}" for r in label_runs if "error" not in r)
            print(f"  {label}: {medians}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "runs": runs, "gemm_gflops": rates,
                                         "flops_per_example": flops_per_example,
                                         "matmuls_alone_epoch_seconds": matmuls_alone,
                                         "load_average": [load_before, load_after]}, indent=1))


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


def notes(results: dict) -> list[str]:
    lines = []
    single, many = results.get(REFERENCE), results.get(f"digitsjax mnist_mlp K={K}, 1st run")
    if single and many and "error" not in single and "error" not in many:
        ratio = steady_epoch(many) / (K * steady_epoch(single))
        lines.append(f"K={K} models in one program: {steady_epoch(many):.3f} s/epoch for all "
                     f"{K} = {ratio:.2f} x the time of {K} separate runs "
                     f"({K} x {steady_epoch(single):.3f} s); its accuracy is the ensemble's.")
        whole = many["total_seconds"] / (K * single["total_seconds"])
        lines.append(f"  Whole runs, process start to exit: {many['total_seconds']:.1f} s (its "
                     f"1st run) = {whole:.2f} x {K} separate runs of {single['total_seconds']:.1f}"
                     " s each.")
    without = results.get(NO_EPOCH_CHECKPOINTS)
    if single and without and "error" not in single and "error" not in without:
        cost = steady_epoch(single) - steady_epoch(without)
        lines.append(f"Checkpointing every epoch (orbax's async save overlaps the next epoch): "
                     f"{steady_epoch(single):.3f} s/epoch against {steady_epoch(without):.3f} s "
                     f"without, {cost:+.3f} s an epoch.")
    for name in ("mnist_mlp", "mnist_fast"):
        first, second = results.get(f"digitsjax {name}, 1st run"), results.get(f"digitsjax {name}")
        if first and second and "params_sha256" in first and "params_sha256" in second:
            same = first["params_sha256"] == second["params_sha256"]
            lines.append(f"digitsjax {name}: params_sha256 {second['params_sha256'][:16]}... "
                         f"{'identical' if same else 'DIFFERENT'} in both runs "
                         "(compiled fresh, then read from the compilation cache).")
    return lines


if __name__ == "__main__":
    main()
