"""The run: a workdir, its manifest, records and checkpoints, the training loop, signals and
the processes of a multi-host run."""
