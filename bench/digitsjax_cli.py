"""digitsjax as a user runs it: `digitsjax train PIPELINE --set ...`, in this process.

Epoch times and test accuracies come from the run's own metrics.jsonl. Its `wall_seconds`
count from the start of training, so the imports and parsing before that are added to give
the time from process start.
"""

from __future__ import annotations

import argparse
import tempfile

from common import REPO, EpochLog, seconds_since_start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default="digitsjax")
    parser.add_argument("--pipeline", default=str(REPO / "pipelines" / "mnist_mlp.toml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    import digitsjax.run.loop  # noqa: F401  (what `digitsjax train` imports before its clock)
    from digitsjax.core.config import load_pipeline
    from digitsjax.core.model import params_sha256
    from digitsjax.main import main as digitsjax_main
    from digitsjax.run.records import read_metrics
    from digitsjax.run.trained import load_network

    workdir = tempfile.mkdtemp(prefix="bench-digitsjax-")
    sets = [arg for override in args.overrides for arg in ("--set", override)]
    before_training = seconds_since_start()
    status = digitsjax_main(["train", args.pipeline, "--workdir", workdir, *sets])
    assert status == 0, f"digitsjax train failed with status {status}"

    log = EpochLog(args.name)
    for record in read_metrics(workdir):
        log.epoch(record["epoch_seconds"], record["test_accuracy"],
                  at=before_training + record["wall_seconds"])
    pipeline = load_pipeline(args.pipeline, args.overrides)
    fingerprint = params_sha256(load_network(workdir).params)
    log.report(pipeline.steps_per_epoch * pipeline.train.batch_size * pipeline.train.num_models,
               num_models=pipeline.train.num_models, params_sha256=fingerprint)


if __name__ == "__main__":
    main()
