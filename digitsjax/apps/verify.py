"""`digitsjax verify`: replay a finished workdir's recorded pipeline and compare fingerprints.

The contract it checks: a run is a pure function of its resolved pipeline, so on the same
platform with the same package versions a replay ends with the same `params_sha256`, bit for
bit. When it does not, the manifests' differences (versions, platform, devices, dataset) and
the first epoch whose metrics differ say where to look.
"""

from __future__ import annotations

import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from digitsjax.apps.sweep import is_sweep, recorded_search, search, summarize
from digitsjax.core.model import params_sha256
from digitsjax.errors import CheckpointError
from digitsjax.run.backend import start_backend
from digitsjax.run.loop import train_program
from digitsjax.run.preemption import Preempted
from digitsjax.run.records import EpochRecord, read_metrics, without_timings
from digitsjax.run.trained import load_network
from digitsjax.run.workdir import Workdir, differences

# Manifest entries that describe the invocation rather than the computation.
MANIFEST_INVOCATION = ("command", "created", "result.", "extensions")  # when, not what


@dataclass(frozen=True)
class Verification:
    step: int
    recorded_sha256: str
    replayed_sha256: str
    first_divergent_epoch: int | None
    """The first epoch whose metrics (timings aside) differ between the runs, if any."""
    manifest_differences: list[str] = field(default_factory=list)

    @property
    def reproduced(self) -> bool:
        return self.recorded_sha256 == self.replayed_sha256

    def to_dict(self) -> dict[str, Any]:
        return {"reproduced": self.reproduced, "step": self.step,
                "recorded_sha256": self.recorded_sha256,
                "replayed_sha256": self.replayed_sha256,
                "first_divergent_epoch": self.first_divergent_epoch,
                "manifest_differences": self.manifest_differences}


def verify_workdir(workdir: Workdir, *, mnist_dir: str | None = None,
                   echo: Callable[[str], None] = print) -> Verification:
    """Re-run `workdir`'s program into a temporary workdir and compare the final params.

    A successive-halving stage's workdir, which continued its points' states at a rung, is
    replayed from step 0 to its stop: each of its points ends at its single run's bits, so the
    replay must reach the recorded fingerprint without the stages before. (A population's
    later stages took other members' states: `verify_sweep` replays the whole search.)"""
    network = load_network(workdir, "latest")
    manifest, recorded_metrics = workdir.manifest, read_metrics(workdir.path)  # before a replay
    pipeline, stop_epoch = network.pipeline, workdir.epochs[1]
    if network.step != stop_epoch * pipeline.steps_per_epoch:
        raise CheckpointError(
            f"{workdir.path} stopped at step {network.step} of "
            f"{stop_epoch * pipeline.steps_per_epoch}",
            f"finish it first (re-running `{manifest.get('command', 'digitsjax train')}` "
            "continues it), then verify")
    echo(f"replaying {workdir.path}'s pipeline {pipeline.name!r} into a temporary workdir")
    with tempfile.TemporaryDirectory(prefix="digitsjax-verify-") as replay_dir:
        try:
            replayed = train_program(network.program, replay_dir, mnist_dir=mnist_dir, echo=echo,
                                     stop_epoch=stop_epoch)
        except Preempted as e:  # its checkpoint is in the folder about to be removed
            raise ReplayStopped(e.signum, e.step) from None
        replay = Workdir.open(replay_dir)
        replay_manifest, replay_metrics = replay.manifest, read_metrics(replay.path)
    return Verification(
        step=network.step,
        recorded_sha256=params_sha256(network.params),
        replayed_sha256=replayed["params_sha256"],
        first_divergent_epoch=_first_divergent_epoch(recorded_metrics, replay_metrics),
        manifest_differences=differences(manifest, replay_manifest, ignore=MANIFEST_INVOCATION))


@dataclass(frozen=True)
class SweepVerification:
    """A sweep replayed whole (its grid, successive halving or population-based training, from
    its sweep.json) beside what it recorded: every point's fingerprint, and where it stopped or
    whose state it took."""

    recorded: list[dict[str, Any]]
    replayed: list[dict[str, Any]]

    @property
    def differing(self) -> list[int]:
        """The points (rows) whose replay ended elsewhere, or went another way."""
        return [n for n, (a, b) in enumerate(zip(self.recorded, self.replayed, strict=True))
                if any(a.get(k) != b.get(k) for k in SEARCHED)]

    @property
    def reproduced(self) -> bool:
        return not self.differing

    def to_dict(self) -> dict[str, Any]:
        return {"reproduced": self.reproduced, "points": len(self.recorded),
                "differing": [{"point": n, "variant": self.recorded[n]["variant"],
                               **{f"recorded_{k}": self.recorded[n].get(k) for k in SEARCHED},
                               **{f"replayed_{k}": self.replayed[n].get(k) for k in SEARCHED}}
                              for n in self.differing]}


SEARCHED = ("params_sha256", "stopped_at", "copied_from")
"""What a replayed search must give each point again: its fingerprint, the rung at which it
stopped (successive halving) and whose states it took (population-based training)."""


def verify_folder(path: Path, *, mnist_dir: str | None = None,
                  echo: Callable[[str], None] = print) -> Verification | SweepVerification:
    """`digitsjax verify PATH`: a workdir's replay, or a whole sweep's."""
    if is_sweep(path):
        return verify_sweep(path, mnist_dir=mnist_dir, echo=echo)
    workdir = Workdir.open(path)
    start_backend(workdir.pipeline.train.deterministic)
    return verify_workdir(workdir, mnist_dir=mnist_dir, echo=echo)


def verify_sweep(sweep_dir: Path, *, mnist_dir: str | None = None,
                 echo: Callable[[str], None] = print) -> SweepVerification:
    """Replay a sweep from its sweep.json into a temporary folder: the same points, schedule
    and decisions, each taken again from the replay's own records."""
    base, grid, schedule = recorded_search(sweep_dir)
    recorded = summarize(sweep_dir)[1]
    if any(row["params_sha256"] is None for row in recorded):
        raise CheckpointError(f"{sweep_dir} is not finished: some of its points have no "
                              "fingerprint yet", "finish it first (re-running the same "
                              "`digitsjax sweep` continues it), then verify")
    start_backend(base.train.deterministic)
    echo(f"replaying {sweep_dir}'s search ({len(recorded)} points) into a temporary folder")
    with tempfile.TemporaryDirectory(prefix="digitsjax-verify-") as replay_dir:
        try:
            search(base, grid, schedule, Path(replay_dir) / "sweep", echo=echo,
                   options={"mnist_dir": mnist_dir})
        except Preempted as e:
            raise ReplayStopped(e.signum, e.step) from None
        replayed = summarize(Path(replay_dir) / "sweep")[1]
    return SweepVerification(recorded, replayed)


class ReplayStopped(Preempted):
    """The replay stopped on a signal. What it checkpointed was in its temporary folder, gone
    with it: unlike a stopped training, nothing is kept to continue from."""

    def __str__(self) -> str:
        return (f"verify stopped by {signal.Signals(self.signum).name}; its replay was "
                "discarded, nothing was kept")


def _first_divergent_epoch(recorded: list[EpochRecord],
                           replayed: list[EpochRecord]) -> int | None:
    by_epoch = {r["epoch"]: without_timings(r) for r in recorded}
    for record in replayed:
        if by_epoch.get(record["epoch"]) != without_timings(record):
            return record["epoch"]
    return None


def summary_lines(verification: Verification | SweepVerification) -> list[str]:
    """The verdict as a person reads it: reproduced bit for bit, or where to look."""
    if isinstance(verification, SweepVerification):
        return _sweep_lines(verification)
    v = verification
    if v.reproduced:
        return [f"reproduced: params_sha256 {v.recorded_sha256} at step {v.step}, bit for bit"]
    lines = [f"NOT reproduced at step {v.step}: params_sha256 recorded {v.recorded_sha256}, "
             f"replayed {v.replayed_sha256}"]
    if v.first_divergent_epoch is not None:
        lines.append(f"metrics first differ at epoch {v.first_divergent_epoch}")
    lines.append("manifest differences: " + ("; ".join(v.manifest_differences) or
                                             "none (same versions and platform)"))
    return lines


def _sweep_lines(v: SweepVerification) -> list[str]:
    if v.reproduced:
        return [f"reproduced: all {len(v.recorded)} points' params_sha256 (and the search's "
                "decisions), bit for bit"]
    lines = [f"NOT reproduced: {len(v.differing)} of {len(v.recorded)} points differ"]
    for n in v.differing:
        a, b = v.recorded[n], v.replayed[n]
        lines.append(f"point {n} ({a['variant']}): " + "; ".join(
            f"{k} recorded {a.get(k)}, replayed {b.get(k)}" for k in SEARCHED
            if a.get(k) != b.get(k)))
    return lines
