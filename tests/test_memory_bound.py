"""Memory is bounded where the job is bounded: the limit a run is checked against is the smaller
of the host's available memory and the room its memory cgroup (v1 or v2, its own or any
parent's) leaves, and the estimate it is checked with grows with what a run holds.

The cgroup files are read from folders given as parameters, so these tests build the
/proc/self/cgroup and cgroup trees of a container in tmp_path.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from digitsjax.apps.sweep import make_variants, read_grid
from digitsjax.core import sharding
from digitsjax.core.config import load_pipeline
from digitsjax.core.footprint import (
    CHECKPOINT,
    EVALUATION,
    KNOBS,
    MNIST,
    PROCESS,
    STATE,
    STEP,
    footprint,
    peak_bytes,
)
from digitsjax.core.program import program_of
from digitsjax.errors import ConfigError, ResourceError
from digitsjax.run import resources

from .conftest import REPO

PIPELINE = REPO / "pipelines" / "mnist_mlp.toml"
GB = 10**9
V1_UNLIMITED = "9223372036854771712"


def container(tmp_path, cgroup_lines: list[str], files: dict[str, str]):
    """(proc, cgroups) folders: /proc/self/cgroup with these lines, and these cgroup files
    ({path under /sys/fs/cgroup: content})."""
    proc, cgroups = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text("".join(f"{line}\n" for line in cgroup_lines))
    for path, content in files.items():
        (cgroups / path).parent.mkdir(parents=True, exist_ok=True)
        (cgroups / path).write_text(content + "\n")
    return proc, cgroups


def test_a_cgroup_v2_limit_leaves_its_limit_less_its_usage(tmp_path):
    roots = container(tmp_path, ["0::/job"], {"job/memory.max": str(3 * GB),
                                              "job/memory.current": str(GB)})
    assert resources.cgroup_room(*roots) == 2 * GB


def test_a_cgroup_v1_limit_leaves_its_limit_less_its_usage(tmp_path):
    roots = container(tmp_path, ["12:cpu,cpuacct:/other", "4:memory:/slurm/job_7", "0::/"], {
        "memory/slurm/job_7/memory.limit_in_bytes": str(3 * GB),
        "memory/slurm/job_7/memory.usage_in_bytes": str(GB // 2),
        "cpu,cpuacct/other/memory.limit_in_bytes": "1"})  # not the memory controller's
    assert resources.cgroup_room(*roots) == 3 * GB - GB // 2


def test_a_parents_limit_binds_its_children(tmp_path):
    roots = container(tmp_path, ["0::/kubepods/pod1/container"], {
        "kubepods/pod1/container/memory.max": "max",
        "kubepods/pod1/container/memory.current": str(GB),
        "kubepods/pod1/memory.max": str(4 * GB),
        "kubepods/pod1/memory.current": str(3 * GB),  # a sibling container holds 2 GB
        "kubepods/memory.max": str(100 * GB),
        "kubepods/memory.current": str(10 * GB)})
    assert resources.cgroup_room(*roots) == GB


def test_page_cache_the_cgroup_may_drop_is_room(tmp_path):
    roots = container(tmp_path, ["0::/job"], {
        "job/memory.max": str(3 * GB), "job/memory.current": str(2 * GB),
        "job/memory.stat": f"anon {GB}\nfile {GB}\ninactive_file {GB // 2}"})
    assert resources.cgroup_room(*roots) == GB + GB // 2
    v1 = container(tmp_path / "v1", ["3:memory:/job"], {
        "memory/job/memory.limit_in_bytes": str(3 * GB),
        "memory/job/memory.usage_in_bytes": str(2 * GB),
        "memory/job/memory.stat": f"inactive_file 5\ntotal_inactive_file {GB}"})
    assert resources.cgroup_room(*v1) == 2 * GB


@pytest.mark.parametrize("files", [
    {"job/memory.max": "max", "job/memory.current": str(GB)},
    {"memory/job/memory.limit_in_bytes": V1_UNLIMITED,
     "memory/job/memory.usage_in_bytes": str(GB)},
    {},  # no memory controller mounted
    {"job/memory.max": str(3 * GB)},  # no usage to subtract
    {"job/memory.max": "three gigabytes", "job/memory.current": str(GB)},
], ids=["v2-max", "v1-unlimited", "no-files", "no-usage", "garbled"])
def test_no_limit_or_an_unreadable_one_bounds_nothing(tmp_path, files):
    roots = container(tmp_path, ["0::/job", "3:memory:/job"], files)
    assert resources.cgroup_room(*roots) is None


def test_an_unreadable_cgroup_file_bounds_nothing(tmp_path):
    roots = container(tmp_path, ["0::/job"], {"job/memory.current": "0"})
    (roots[1] / "job" / "memory.max").mkdir()  # reading it fails, for root too
    assert resources.cgroup_room(*roots) is None
    assert resources.cgroup_room(tmp_path / "no-proc", tmp_path / "no-cgroup") is None
    (roots[0] / "self" / "cgroup").write_bytes(b"0::/job\xff\xfe\n")  # not text
    (roots[1] / "job" / "memory.max").rmdir()
    (roots[1] / "job" / "memory.max").write_text(str(GB))
    assert resources.cgroup_room(*roots) is None


def test_the_refusal_names_the_bound_that_applied(monkeypatch):
    program, mesh = program_of(load_pipeline(PIPELINE)), sharding.data_mesh()
    need = resources.estimated_peak_bytes(program.pipeline, mesh, sweep=False)
    monkeypatch.setattr(resources, "host_available_bytes", lambda: 100 * need)
    monkeypatch.setattr(resources, "cgroup_room", lambda: need - 1)
    with pytest.raises(ResourceError) as cgroup:
        resources.check_memory(program, mesh)
    assert f"more than the {resources._gb(need - 1)} this job's cgroup allows" in str(cgroup.value)
    monkeypatch.setattr(resources, "host_available_bytes", lambda: need - 2)
    with pytest.raises(ResourceError) as host:
        resources.check_memory(program, mesh)
    assert "this host has available" in str(host.value)
    monkeypatch.setattr(resources, "cgroup_room", lambda: need)
    monkeypatch.setattr(resources, "host_available_bytes", lambda: need)
    resources.check_memory(program, mesh)  # exactly fits
    monkeypatch.setattr(resources, "cgroup_room", lambda: 1)
    with pytest.raises(ResourceError) as tiny:  # no knob makes the process fit
        resources.check_memory(program, mesh)
    assert tiny.value.fix.startswith("run where more memory is free (the process and MNIST ")


def test_a_sweep_holds_as_many_models_as_the_cgroup_leaves_room_for(monkeypatch):
    pipeline, mesh = load_pipeline(PIPELINE, ["model.hidden=[1024, 1024]"]), sharding.data_mesh()
    three = load_pipeline(PIPELINE, ["model.hidden=[1024, 1024]", "train.num_models=3"])
    room = resources.estimated_peak_bytes(three, mesh, sweep=True)
    monkeypatch.setattr(resources, "host_available_bytes", lambda: 1000 * GB)
    monkeypatch.setattr(resources, "cgroup_room", lambda: room)
    assert resources.max_models_that_fit(pipeline, mesh, 100) == 3


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_run_larger_than_its_cgroup_is_refused_in_one_line_before_writing(tmp_path, command):
    """The whole path, as in a 3 GB container: its cgroup files, read by the CLI's process."""
    proc, cgroups = container(tmp_path, ["0::/job"], {"job/memory.max": str(3 * GB),
                                                      "job/memory.current": "0"})
    workdir = tmp_path / "run"
    code = ("import sys; from pathlib import Path; from digitsjax.run import resources; "
            f"resources.PROC, resources.CGROUPS = Path({str(proc)!r}), Path({str(cgroups)!r}); "
            "from digitsjax.main import main; sys.exit(main(sys.argv[1:]))")
    pipeline = REPO / "pipelines" / ("lr_sweep.toml" if command == "sweep" else "mnist_mlp.toml")
    refused = subprocess.run(
        [sys.executable, "-c", code, command, str(pipeline), "--workdir", str(workdir),
         "--set=model.hidden=[8192]", "--set=train.batch_size=55000"],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert refused.returncode == 2, refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("digitsjax: error: this run needs about ")
    assert line.endswith(" GB for a training step), more than the 3.0 GB this job's cgroup "
                         "allows; lower train.batch_size or train.num_models")
    assert not workdir.exists()


def parts_of(*overrides: str, **options) -> dict[str, int]:
    return footprint(load_pipeline(PIPELINE, overrides), **options)


def test_a_wide_layer_at_a_large_batch_needs_three_of_its_activations_and_says_so():
    """XLA:CPU keeps the pre-activations, the activations and their gradient of every example
    of the batch; the step is then the largest part, lowered by the batch size."""
    wide = ("model.hidden=[8192]", "train.batch_size=55000")
    parts = parts_of(*wide)
    assert max(parts, key=parts.get) == STEP
    assert KNOBS[STEP][0] == "train.batch_size"
    assert parts[STEP] >= 3 * 55_000 * (8192 + 10) * 4
    half = parts_of("model.hidden=[8192]", "train.batch_size=27500")
    assert parts[STEP] == pytest.approx(2 * half[STEP], rel=0.01)  # linear in the batch
    narrow = parts_of("model.hidden=[2048]", "train.batch_size=55000")
    assert parts[STEP] > 3 * narrow[STEP]  # and nearly so in the width


def test_a_whole_split_evaluated_at_once_is_the_largest_part_of_a_wide_small_batch_run():
    parts = parts_of("model.hidden=[8192]", "train.batch_size=1000", "data.validation_size=59000")
    assert max(parts, key=parts.get) == EVALUATION
    assert parts[EVALUATION] >= 59_000 * (8192 + 10) * 4
    assert set(KNOBS[EVALUATION]) == {"train.num_models", "model.hidden"}


def test_the_process_is_most_of_a_small_networks_peak_and_the_same_for_every_pipeline():
    small, wide = parts_of(), parts_of("model.hidden=[8192]", "train.batch_size=55000")
    assert small[PROCESS] == wide[PROCESS] > peak_bytes(small) / 2
    assert KNOBS[PROCESS] == () and KNOBS[MNIST] == ()  # nothing to lower


def test_the_process_and_a_checkpoint_are_held_once_and_in_the_hosts_memory():
    parts = parts_of("train.num_models=8")
    assert parts[CHECKPOINT] * 2 == parts[STATE]  # two concurrent groups: the state twice
    on_two = peak_bytes(parts, devices=2) - peak_bytes(parts, devices=1)
    assert on_two == pytest.approx(peak_bytes(parts, host=False), abs=1)  # one device's share
    assert peak_bytes(parts) - peak_bytes(parts, host=False) >= parts[PROCESS] + parts[CHECKPOINT]


def test_dropout_augmentation_and_distinct_data_orders_add_to_a_step():
    batch = ("model.hidden=[1024, 1024]", "train.batch_size=16384")
    plain = parts_of(*batch)[STEP]
    assert parts_of(*batch, "model.dropout=0.5")[STEP] > plain
    assert parts_of(*batch, "augment.elastic_alpha=36.0")[STEP] > plain
    seeds = parts_of(*batch, "train.num_models=4")  # four seeds: four batches gathered
    one_order = parts_of(*batch, "train.num_models=4", data_orders=1)
    assert seeds[STEP] - one_order[STEP] == 3 * 16384 * 784 * 4


def test_every_shipped_pipeline_trains_in_a_small_container(monkeypatch):
    """Each of pipelines/*.toml (a sweep's: each of its programs) fits in 2 GiB."""
    mesh = sharding.data_mesh()
    monkeypatch.setattr(resources, "host_available_bytes", lambda: 64 * 2**30)
    monkeypatch.setattr(resources, "cgroup_room", lambda: 2 * 2**30)
    for path in sorted((REPO / "pipelines").glob("*.toml")):
        pipeline = load_pipeline(path, for_sweep=True)
        try:
            grid = read_grid(path, [])
        except ConfigError:  # no [sweep] table: one run
            resources.check_memory(program_of(pipeline), mesh)
            continue
        for variant in make_variants(pipeline, grid):
            resources.check_memory(program_of(variant.pipeline), mesh)
        if "model.hidden" not in grid:  # the points differ in numbers: one program
            wanted = len(make_variants(pipeline, grid))
            assert resources.max_models_that_fit(pipeline, mesh, wanted) == wanted, path.name


def test_a_1024_point_grid_of_mnist_mlp_is_one_program_with_16_gib_free(monkeypatch):
    monkeypatch.setattr(resources, "host_available_bytes", lambda: 16 * 2**30)
    monkeypatch.setattr(resources, "cgroup_room", lambda: None)
    mesh = sharding.data_mesh()
    assert resources.max_models_that_fit(load_pipeline(PIPELINE), mesh, 1024) == 1024
