"""`make install ACCEL=...`: one command for the jax build of each accelerator, at pinned versions.

Read with `make -n -B` (print, do not run), so the test installs nothing and runs anywhere.
"""

import shutil
import subprocess
import tomllib

import pytest

from .conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-n", "-B", "-C", str(REPO), *args], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize(("accel", "runtime", "dev"), [
    ("cpu", ".", "'.[dev]'"), ("cuda", "'.[cuda]'", "'.[dev,cuda]'"),
    ("cuda12", "'.[cuda12]'", "'.[dev,cuda12]'"), ("tpu", "'.[tpu]'", "'.[dev,tpu]'")])
def test_each_accelerator_installs_its_jax_build_within_the_pinned_versions(accel, runtime, dev):
    out = make("install", f"ACCEL={accel}")
    assert out.returncode == 0, out.stderr
    assert f"pip install --quiet -c constraints.txt -e {runtime}\n" in out.stdout
    assert f"echo {accel} > .venv/.accel" in out.stdout  # later make train/test keep it
    tests = make("test", f"ACCEL={accel}")
    assert f"pip install --quiet -c constraints.txt -e {dev}\n" in tests.stdout


@pytest.mark.parametrize("command", ["install", "train"])
def test_training_installs_what_a_run_needs_and_no_test_tool(command):
    out = make(command)
    assert out.returncode == 0, out.stderr
    assert "'.[dev" not in out.stdout and "bench]" not in out.stdout


@pytest.mark.parametrize("command", ["test", "lint"])
def test_the_test_suite_and_the_linter_add_the_dev_extra(command):
    assert "-e '.[dev]'" in make(command).stdout


def test_the_accelerator_extras_are_jaxs_own():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert (extras["cuda"], extras["cuda12"], extras["tpu"]) == (
        ["jax[cuda13]"], ["jax[cuda12]"], ["jax[tpu]"])
    pins = (REPO / "constraints.txt").read_text().splitlines()
    assert any(line.startswith("jax==") for line in pins)  # so the plugin's version is pinned


def test_an_unknown_accelerator_is_refused_in_one_line_with_the_choices():
    out = make("install", "ACCEL=rocm")
    assert out.returncode != 0
    assert out.stderr.strip().endswith(
        "ACCEL=rocm is not a jax build digitsjax installs: use one of cpu cuda cuda12 tpu.  Stop.")
    assert len(out.stderr.strip().splitlines()) == 1
