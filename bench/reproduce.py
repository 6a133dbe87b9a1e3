"""Train the paper pipelines and mnist_best, and print what each paper reports beside what ran.

`make reproduce` (or `python bench/reproduce.py [NAME ...] [--workdir-root DIR] [--list]`):
each pipeline trains in a fresh `digitsjax train` process, timed from the moment it is launched
(start-up, data, compilation and evaluation included), into `DIR/<name>` (default
`checkpoints/reproduce/<name>`; a finished workdir is re-read, not retrained). The table gives
the test error at the epoch the validation split chose, never the best test epoch.

The default set is what 2 CPU cores finish in about an hour; `--all` adds the networks that
need an accelerator (Ciresan's largest, and the original online-SGD schedules).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # digitsjax from this checkout, also without `pip install -e`

from digitsjax.run.records import best_evaluated, read_metrics  # noqa: E402
from digitsjax.run.workdir import MANIFEST  # noqa: E402


@dataclass(frozen=True)
class Reference:
    pipeline: str
    source: str
    """The paper and table row the pipeline reproduces."""
    paper_error: float | None
    """Percent test error the paper reports; None for digitsjax's own record attempt."""
    cpu: bool
    """Part of the default (2-CPU-core) set."""


REFERENCES = (
    Reference("mnist_best", "digitsjax: the most accurate MLP 2 CPU cores train in 20 min",
              None, True),
    Reference("simard2003", "Simard et al. 2003, Table 1, MLP 800 HU + elastic", 0.7, True),
    Reference("ciresan2010_small_modern", "Ciresan et al. 2010, Table 1 net 1 (modern schedule)",
              0.49, True),
    Reference("dropout2014", "Srivastava et al. 2014, Table 2, 3x1024 ReLU dropout + max-norm",
              1.06, True),
    Reference("ciresan2010_modern", "Ciresan et al. 2010, Table 1 net 5 (modern schedule)",
              0.35, False),
    Reference("ciresan2010_small", "Ciresan et al. 2010, Table 1 net 1 (original schedule)",
              0.49, False),
    Reference("ciresan2010", "Ciresan et al. 2010, Table 1 net 5 (original schedule)", 0.35,
              False),
)


def train(reference: Reference, workdir: Path) -> float | None:
    """Train (or finish) the pipeline in its own process; the wall seconds, None if re-read."""
    if _finished(workdir):
        return None
    start = time.monotonic()
    command = [sys.executable, "-m", "digitsjax", "train",
               str(REPO / "pipelines" / f"{reference.pipeline}.toml"), "--workdir", str(workdir)]
    subprocess.run(command, check=True, cwd=REPO)
    return time.monotonic() - start


def _finished(workdir: Path) -> bool:
    manifest = workdir / MANIFEST
    return manifest.exists() and "result" in json.loads(manifest.read_text())


def row(reference: Reference, workdir: Path, seconds: float | None) -> str:
    best = best_evaluated(read_metrics(workdir))
    result = json.loads((workdir / MANIFEST).read_text())["result"]
    paper = f"{reference.paper_error:.2f} %" if reference.paper_error is not None else "—"
    minutes = f"{seconds / 60:.1f}" if seconds is not None else "(earlier run)"
    return (f"| {reference.pipeline} | {reference.source} | {paper} | "
            f"{100 * (1 - best['test_accuracy']):.2f} % (epoch {best['epoch']}) | {minutes} | "
            f"`{result['params_sha256'][:12]}` |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="pipelines to run (default: the CPU set)")
    parser.add_argument("--all", action="store_true", help="also the accelerator-sized ones")
    parser.add_argument("--workdir-root", type=Path, default=REPO / "checkpoints" / "reproduce")
    parser.add_argument("--list", action="store_true", help="list the pipelines and exit")
    args = parser.parse_args(argv)
    known = {r.pipeline: r for r in REFERENCES}
    if args.list:
        for r in REFERENCES:
            print(f"{r.pipeline:26} {'cpu' if r.cpu else 'accelerator':12} {r.source}")
        return 0
    unknown = [n for n in args.names if n not in known]
    if unknown:
        print(f"reproduce: unknown pipeline(s) {', '.join(unknown)}; see --list", file=sys.stderr)
        return 2
    chosen = [known[n] for n in args.names] or [r for r in REFERENCES if r.cpu or args.all]
    rows = []
    for reference in chosen:
        workdir = args.workdir_root / reference.pipeline
        rows.append(row(reference, workdir, train(reference, workdir)))
    print(f"\n{_hardware(args.workdir_root / chosen[-1].pipeline)}\n")
    print("| pipeline | reproduces | paper error | measured error (epoch chosen by validation) "
          "| minutes | params_sha256 |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


def _hardware(workdir: Path) -> str:
    """The backend and devices the runs recorded, and this host's CPU and core count."""
    recorded = json.loads((workdir / MANIFEST).read_text())["platform"]
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.machine()) if Path("/proc/cpuinfo").exists() else platform.machine()
    return (f"backend {recorded['backend']} ({', '.join(recorded['devices'])}); host {cpu}, "
            f"{len(os.sched_getaffinity(0))} cores")


if __name__ == "__main__":
    sys.exit(main())
