"""A workdir's ledger lists every entry its runs wrote, and `--restart` deletes exactly those.

Ownership is a record (`files.OwnedFolder`), never a guess from names: a user's folder named like
a step (`checkpoints/2024/`) or a file of theirs inside a real step is never deleted; a restart
that would leave them among orbax's folders is refused in one line, before anything changes. A
workdir written before the ledger existed is adopted once, by what its runs could have written.
No path a run writes follows a symbolic link, and no name leaves its folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from digitsjax.core.config import load_pipeline
from digitsjax.errors import UserError
from digitsjax.files import DEFAULT_WORKDIR_ROOT, LEDGER, OwnedFolder, default_workdir
from digitsjax.run import checkpoint, cluster
from digitsjax.run.lock import LOCK, workdir_lock
from digitsjax.run.loop import train_pipeline
from digitsjax.run.tensorboard import ScalarWriter
from digitsjax.run.workdir import MANIFEST, prepared_workdir

from . import conftest
from .conftest import REPO, run_cli

PIPELINE = REPO / "pipelines" / "mnist_mlp.toml"
TINY = (*conftest.TINY, "train.epochs=2")


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def everything(folder: Path) -> list[str]:
    """Every entry under `folder`, as the ledger names them (folders end in "/")."""
    return sorted(f"{p.relative_to(folder).as_posix()}{'/' if p.is_dir() else ''}"
                  for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist_dir) -> Path:
    """A finished two-epoch run, a checkpoint at each epoch."""
    return conftest.train_mnist_mlp(tmp_path_factory.mktemp("trained") / "run", TINY, mnist_dir)


@pytest.fixture
def workdir(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run", symlinks=True))


def steps(workdir: Path) -> list[str]:
    return sorted(p.name for p in checkpoint.checkpoint_dir(workdir).iterdir())


def test_every_entry_a_run_writes_is_in_its_ledger(trained):
    written = OwnedFolder(trained).written()
    assert steps(trained) == ["10", "20"]
    assert [entry for entry in everything(trained) if entry not in written] == [LEDGER]
    assert {LOCK, MANIFEST, "metrics.jsonl", "checkpoints/", "checkpoints/20/",
            "checkpoints/20/state/manifest.ocdbt"} <= written


def test_a_resumed_and_restarted_run_lists_what_it_writes_and_nothing_stays_listed_that_is_gone(
        workdir, mnist_dir):
    quiet = {"mnist_dir": str(mnist_dir), "echo": lambda _: None}
    constant = [*TINY, "optimizer.schedule=constant", "checkpoint.keep_best=false"]
    train_pipeline(load_pipeline(PIPELINE, [*constant, "train.epochs=3"]), workdir,
                   restart=True, **quiet)
    train_pipeline(load_pipeline(PIPELINE, [*constant, "train.epochs=4"]), workdir, **quiet)
    assert steps(workdir) == ["20", "30", "40"]  # checkpoint.keep = 3
    assert sorted(set(everything(workdir)) - OwnedFolder(workdir).written()) == [LEDGER]
    gone = [e for e in OwnedFolder(workdir).written() if not os.path.lexists(workdir / e)]
    assert all(e.startswith("checkpoints/10/") for e in gone)  # orbax's deletion, not ours


USERS_FILES = [("checkpoints/2024/notes.txt", "checkpoints/2024/notes.txt"),
               ("checkpoints/10/README.mine", "checkpoints/10/README.mine"),
               ("checkpoints-unreadable/mine.txt", "checkpoints-unreadable/mine.txt")]


@pytest.mark.parametrize("legacy", [False, True], ids=["ledger", "before-the-ledger"])
@pytest.mark.parametrize(("users", "named"), USERS_FILES)
def test_restart_refuses_a_workdir_holding_a_users_file_among_the_checkpoints(
        workdir, users, named, legacy):
    if legacy:  # as a workdir trained before the ledger existed
        (workdir / LEDGER).unlink()
    (workdir / users).parent.mkdir(parents=True, exist_ok=True)
    (workdir / users).write_text("keep me")
    before = files(workdir)
    refused = run_cli("train", str(PIPELINE), "--workdir", str(workdir), "--restart",
                      *(f"--set={o}" for o in TINY))
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        f"digitsjax: error: {workdir} holds files that no run wrote ({named}), which a restart "
        "would delete; move them away first, or choose another with --workdir"]
    assert files(workdir) == before


def test_a_workdir_from_before_the_ledger_is_adopted_once_and_restarted(workdir, mnist_dir):
    (workdir / LEDGER).unlink()
    (workdir / "notes.txt").write_text("mine")
    (workdir / "plots").mkdir()
    (workdir / "plots" / "mine.png").write_text("mine")
    train_pipeline(load_pipeline(PIPELINE, [*TINY, "seed=1"]), workdir, restart=True,
                   mnist_dir=str(mnist_dir), echo=lambda _: None)
    assert (workdir / "notes.txt").read_text() == "mine"
    assert (workdir / "plots" / "mine.png").read_text() == "mine"
    ledger = OwnedFolder(workdir)
    assert ledger.owns(MANIFEST) and ledger.owns("checkpoints/20/state/manifest.ocdbt")
    assert not ledger.owns("notes.txt") and not ledger.owns("plots/mine.png")


def test_restart_of_a_relative_workdir_holding_foreign_files_is_one_line(tmp_path):
    """As `--workdir run` or the default checkpoints/<name>, run from the folder that holds it."""
    for workdir, option in (("run", ("--workdir", "run")),
                            (f"{DEFAULT_WORKDIR_ROOT}/mnist_mlp", ())):
        (tmp_path / workdir / "checkpoints").mkdir(parents=True)
        (tmp_path / workdir / "checkpoints" / "x.txt").write_text("mine")
        refused = run_cli("train", str(PIPELINE), *option, "--restart",
                          *(f"--set={o}" for o in TINY), cwd=tmp_path)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.splitlines() == [
            f"digitsjax: error: {workdir} is not a digitsjax workdir (it has no manifest.json) "
            "and holds files (checkpoints/x.txt); train into a new or empty folder: choose one "
            "with --workdir"]


def test_refusing_a_folder_of_many_files_names_a_few_and_counts_the_rest(tmp_path):
    for n in range(3000):
        (tmp_path / f"file-{n:04}.txt").write_text("")
    with pytest.raises(UserError) as refused, prepared_workdir(tmp_path, False, print):
        pass
    assert "(file-0000.txt, file-0001.txt, file-0002.txt and 2,997 more)" in str(refused.value)
    assert len(str(refused.value)) < 400
    assert not (tmp_path / LEDGER).exists()


def test_a_workdir_name_too_long_for_the_filesystem_is_one_line(tmp_path):
    workdir = tmp_path / ("a" * 300)
    refused = run_cli("train", str(PIPELINE), "--workdir", str(workdir),
                      *(f"--set={o}" for o in TINY))
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        f"digitsjax: error: workdir {workdir} is not writable (File name too long); choose "
        "another with --workdir"]


@pytest.mark.parametrize("name", ["../outside", "/tmp/outside", "a/b", "..", ".", ""])
def test_a_default_workdir_never_leaves_the_checkpoints_folder(name, tmp_path, monkeypatch):
    """As the Python API given a `Pipeline` whose name no pipeline file checked."""
    import dataclasses

    from digitsjax import api

    monkeypatch.chdir(tmp_path)
    pipeline = dataclasses.replace(load_pipeline(PIPELINE, TINY), name=name)
    with pytest.raises(UserError, match="plain folder name"):
        api.train(pipeline, echo=lambda _: None)
    assert os.listdir(tmp_path) == []
    assert default_workdir("mnist_mlp") == DEFAULT_WORKDIR_ROOT / "mnist_mlp"


def test_a_lock_that_is_a_symbolic_link_is_refused_and_its_target_untouched(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / LOCK).symlink_to(target)
    with pytest.raises(UserError, match="is a symbolic link, which digitsjax does not follow"), \
            workdir_lock(workdir, print):
        pass
    assert target.read_text() == "precious"


def test_an_event_file_never_follows_a_link_planted_at_its_name(tmp_path, monkeypatch):
    import tensorboardX.event_file_writer as events

    from digitsjax.run import tensorboard

    monkeypatch.setattr(events.time, "time", lambda: 1700000000.5)
    monkeypatch.setattr(tensorboard.time, "time_ns", lambda: 7)
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    workdir = tmp_path / "run"
    workdir.mkdir()
    name = f"events.out.tfevents.1700000000.{events.socket.gethostname()}.{7:020d}"
    (workdir / name).symlink_to(target)
    writer = ScalarWriter(workdir, 0)
    with pytest.raises(UserError, match="is a symbolic link, which digitsjax does not follow"):
        writer.write({"step": 1, "train_loss": 1.0})
    assert target.read_text() == "precious"


def test_only_the_primary_process_writes_the_ledger(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster, "is_primary", lambda: False)
    monkeypatch.setattr(cluster, "sync", lambda _: None)
    (tmp_path / "run").mkdir()
    with prepared_workdir(tmp_path / "run", False, print):
        pass
    assert os.listdir(tmp_path / "run") == []
