"""What digitsjax writes it records, and it replaces or deletes nothing else: `files.OwnedFolder`.

The ledger is the only judge of ownership: a file of the user's with the very name digitsjax
would write is never replaced, and a deletion removes exactly the listed entries.
"""

from __future__ import annotations

import os

import pytest

from digitsjax.errors import FileError
from digitsjax.files import LEDGER, OwnedFolder, write_atomic


def test_a_written_file_is_listed_and_may_be_written_again(tmp_path):
    folder = OwnedFolder(tmp_path)
    folder.write_text("summary.md", "one")
    folder.write_text("summary.md", "two")
    assert (tmp_path / "summary.md").read_text() == "two"
    assert folder.owns("summary.md")


def test_a_users_file_of_the_same_name_is_never_replaced(tmp_path):
    (tmp_path / "summary.md").write_text("mine")
    with pytest.raises(FileError, match=r"summary\.md exists and digitsjax did not write it"):
        OwnedFolder(tmp_path).write_text("summary.md", "ours")
    assert (tmp_path / "summary.md").read_text() == "mine"


@pytest.mark.parametrize("name", ["../outside.txt", "/tmp/outside.txt", "a/../../outside.txt"])
def test_a_name_that_leaves_the_folder_is_refused(tmp_path, name):
    inner = tmp_path / "inner"
    inner.mkdir()
    with pytest.raises(FileError, match="is not a name inside"):
        OwnedFolder(inner).write_text(name, "x")
    assert not (tmp_path / "outside.txt").exists()


def test_no_symbolic_link_on_the_way_is_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "plots").symlink_to(elsewhere)
    (folder / "notes.txt").symlink_to(elsewhere / "target.txt")
    owned = OwnedFolder(folder)
    for name in ("plots/a.png", "notes.txt"):
        with pytest.raises(FileError, match="is a symbolic link"):
            owned.write_text(name, "x")
    assert list(elsewhere.iterdir()) == []


def test_removal_deletes_exactly_the_listed_entries(tmp_path):
    folder = OwnedFolder(tmp_path)
    folder.folder("plots")
    folder.write_text("plots/curves.png", "ours")
    folder.write_text("metrics.jsonl", "ours")
    (tmp_path / "plots" / "mine.png").write_text("the user's")
    assert folder.strangers(["plots", "metrics.jsonl"]) == ["plots/mine.png"]
    folder.remove(["plots", "metrics.jsonl"])
    assert sorted(os.listdir(tmp_path)) == sorted([LEDGER, "plots"])
    assert os.listdir(tmp_path / "plots") == ["mine.png"]


def test_appends_create_list_and_extend_a_file(tmp_path):
    folder = OwnedFolder(tmp_path)
    folder.append("metrics.jsonl", "1\n")
    folder.append("metrics.jsonl", "2\n")
    assert (tmp_path / "metrics.jsonl").read_text() == "1\n2\n"
    assert folder.written() == {"metrics.jsonl"}


def test_a_ledger_line_cut_short_by_a_crash_is_ignored(tmp_path):
    (tmp_path / LEDGER).write_text('"a.txt"\n"b.t')
    assert OwnedFolder(tmp_path).written() == {"a.txt"}


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_text("old")

    def fail(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(FileError, match=r"cannot write .*model.onnx \(No space left on device\)"):
        write_atomic(target, fail)
    assert os.listdir(tmp_path) == ["model.onnx"]
    assert target.read_text() == "old"


def test_a_write_into_a_vanished_folder_is_one_error(tmp_path):
    with pytest.raises(FileError, match="No such file or directory"):
        write_atomic(tmp_path / "gone" / "x.png", lambda f: f.write(b"x"))


def test_a_file_in_the_way_of_the_temporary_is_refused_and_kept(tmp_path):
    target = tmp_path / "sweep.md"
    planted = tmp_path / f".sweep.md.{os.getpid()}.tmp"
    planted.write_text("the user's")
    with pytest.raises(FileError, match=r"is in the way"):
        write_atomic(target, lambda f: f.write(b"ours"))
    assert planted.read_text() == "the user's"
    assert not target.exists()
