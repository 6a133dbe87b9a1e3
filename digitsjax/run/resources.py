"""Whether a run fits in this machine's memory, asked before anything is allocated.

An accelerator reports the memory its allocator may use; a CPU backend shares the host's, so
there the limit is the smaller of the host's available memory and the room the process's memory
cgroup leaves (how Docker, Kubernetes and Slurm bound a job: a cgroup's limit kills a process
that the host would still have room for), shared by every simulated device. A cgroup's room is
its limit less what it holds, not counting the page cache it may drop (its inactive files, as
the kubelet and `docker stats` count a working set); a parent's limit binds its children too, so
every cgroup from the process's own up to the root is read, in cgroup v2 (`memory.max`,
`memory.current`) and in the v1 `memory` hierarchy (`memory.limit_in_bytes`,
`memory.usage_in_bytes`). A file that is missing or unreadable bounds nothing: the check then
falls back to the host, never fails.

The estimate is of the process's whole peak, and what the process already holds when it is
asked (its libraries) is no longer free: that much is counted twice, on the safe side.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from jax.sharding import Mesh

from digitsjax.core.config import Pipeline
from digitsjax.core.footprint import HOST_PARTS, KNOBS, footprint, peak_bytes
from digitsjax.core.hyper import with_values
from digitsjax.core.program import Program
from digitsjax.errors import ResourceError

PROC = Path("/proc")
CGROUPS = Path("/sys/fs/cgroup")
NO_LIMIT = 2**62
"""A cgroup limit at or above this is none: cgroup v1 writes "unlimited" as the largest
page-aligned 64-bit count (9223372036854771712 with 4 KiB pages), v2 writes "max"."""
HOST = "this host has available"
CGROUP = "this job's cgroup allows"


def check_memory(program: Program, mesh: Mesh) -> None:
    """Refuse, in one line with the estimate, the limit and what to lower, a program that
    cannot fit."""
    orders = len(set(program.data_orders()))
    parts = footprint(program.pipeline, mesh.size, program.is_sweep, orders)
    limit, where, sharing, host = _memory_limit(mesh)
    need = peak_bytes(parts, sharing, host)
    if need <= limit:
        return
    # the largest part a knob lowers (the process and MNIST are what they are)
    largest = max((part for part in parts if KNOBS[part] and (host or part not in HOST_PARTS)),
                  key=lambda part: parts[part] * (1 if part in HOST_PARTS else sharing))
    held = parts[largest] * (1 if largest in HOST_PARTS else sharing)
    fix = f"lower {' or '.join(KNOBS[largest])}"
    fixed = peak_bytes({part: 0 if KNOBS[part] else size for part, size in parts.items()},
                       sharing, host)
    if fixed > limit:  # no knob can help
        fix = f"run where more memory is free (the process and MNIST alone take {_gb(fixed)})"
    raise ResourceError(
        f"this run needs about {_gb(need)} of memory ({_gb(held)} for {largest}), more than "
        f"the {_gb(limit)} {where}", fix)


def max_models_that_fit(pipeline: Pipeline, mesh: Mesh, wanted: int) -> int:
    """The most of `wanted` grid points (the pipeline's network, K at a time under vmap) that
    one sweep program can train in this machine's memory; at least 1 (check_memory refuses
    that one)."""
    limit, _, sharing, host = _memory_limit(mesh)

    def fits(k: int) -> bool:
        many = with_values(pipeline, {"train.num_models": k})
        return peak_bytes(footprint(many, mesh.size, sweep=True), sharing, host) <= limit

    low, high = 1, wanted  # the footprint grows with k: bisect for the largest that fits
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low


def estimated_peak_bytes(pipeline: Pipeline, mesh: Mesh, sweep: bool,
                         data_orders: int | None = None) -> int:
    """What check_memory compares with the limit, for a run of `pipeline` on `mesh` whose
    models see `data_orders` orders of the data (unless given, each its own)."""
    _, _, sharing, host = _memory_limit(mesh)
    return peak_bytes(footprint(pipeline, mesh.size, sweep, data_orders), sharing, host)


def _memory_limit(mesh: Mesh) -> tuple[int, str, int, bool]:
    """(bytes the run may hold, where that limit comes from, devices sharing it, whether it is
    the host's memory)."""
    device = mesh.devices.flat[0]
    limit, where = _device_limit(device)
    if limit is not None:
        return limit, where, 1, False
    # a CPU backend: the host's memory, held by each of this process's devices
    sharing = len([d for d in mesh.devices.flat if d.process_index == device.process_index])
    host, room = host_available_bytes(), cgroup_room()
    if room is not None and room < host:
        return room, CGROUP, sharing, True
    return host, HOST, sharing, True


def _device_limit(device: Any) -> tuple[int | None, str]:
    """What the device's allocator may hold, or None for a CPU (no separate memory)."""
    stats = device.memory_stats() if device.platform != "cpu" else None
    if not stats or "bytes_limit" not in stats:
        return None, ""
    return stats["bytes_limit"] - stats.get("bytes_in_use", 0), f"a {device.device_kind} has free"


def host_available_bytes() -> int:
    """Linux's MemAvailable (what can be allocated without swapping), else free pages."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def cgroup_room(proc: Path | None = None, cgroups: Path | None = None) -> int | None:
    """The least room (limit less usage, at least 0) that any memory cgroup holding this
    process leaves, cgroup v2 and v1 alike; None where none bounds it. `proc` and `cgroups` are
    where /proc and /sys/fs/cgroup are mounted (PROC and CGROUPS unless given)."""
    files = _cgroup_files(proc or PROC, cgroups or CGROUPS)
    rooms = [room for folder, *names in files
             if (room := _room(folder, *names)) is not None]
    return min(rooms, default=None)


def _cgroup_files(proc: Path, cgroups: Path) -> list[tuple[Path, str, str, str]]:
    """(folder, limit file, usage file, memory.stat's key for the cache it may drop) of each
    memory cgroup of this process, its own and every ancestor, from its lines in
    /proc/self/cgroup ("ID:CONTROLLERS:PATH")."""
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    found = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # the unified (v2) hierarchy
            root, files = cgroups, ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            root, files = cgroups / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes",
                                               "total_inactive_file")
        else:
            continue
        # Parts that climb out (a path outside a cgroup namespace) name no folder below root.
        parts = [part for part in PurePosixPath(path).parts[1:] if part not in (".", "..")]
        found += [(root.joinpath(*parts[:depth]), *files) for depth in range(len(parts) + 1)]
    return found


def _room(folder: Path, limit_file: str, usage_file: str, cache: str) -> int | None:
    """A cgroup's limit less its usage (less the cache it may drop, where memory.stat says);
    None without a limit or where the limit or the usage cannot be read."""
    try:
        limit = (folder / limit_file).read_text().strip()
        if limit == "max" or int(limit) >= NO_LIMIT:
            return None
        usage = int((folder / usage_file).read_text().strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return max(0, int(limit) - usage + min(usage, _stat(folder / "memory.stat", cache)))


def _stat(path: Path, key: str) -> int:
    """One count of a cgroup's memory.stat ("KEY VALUE" lines); 0 where it cannot be read."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    return 0


def _gb(size: int) -> str:
    return f"{size / 1e9:.1f} GB"
