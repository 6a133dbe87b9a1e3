"""Whether a run fits in this machine's memory, asked before anything is allocated.

An accelerator reports the memory its allocator may use; a CPU backend shares the host's, so
there the host's available memory is the limit, shared by every simulated device.
"""

from __future__ import annotations

import os
from typing import Any

from jax.sharding import Mesh

from digitsjax.core.config import Pipeline
from digitsjax.core.footprint import KNOBS, footprint, peak_bytes
from digitsjax.core.hyper import with_values
from digitsjax.core.program import Program
from digitsjax.errors import ResourceError


def check_memory(program: Program, mesh: Mesh) -> None:
    """Refuse, in one line with the estimate, the limit and what to lower, a program that
    cannot fit."""
    parts = footprint(program.pipeline, mesh.size, program.is_sweep)
    limit, where, sharing = _memory_limit(mesh)
    need = peak_bytes(parts) * sharing
    if need <= limit:
        return
    largest = max(parts, key=lambda part: parts[part])
    raise ResourceError(
        f"this run needs about {_gb(need)} of memory ({_gb(parts[largest] * sharing)} for "
        f"{largest}), more than the {_gb(limit)} {where}",
        f"lower {' or '.join(KNOBS[largest])}")


def max_models_that_fit(pipeline: Pipeline, mesh: Mesh, wanted: int) -> int:
    """The most of `wanted` grid points (the pipeline's network, K at a time under vmap) that
    one sweep program can train in this machine's memory; at least 1 (check_memory refuses
    that one)."""
    limit, _, sharing = _memory_limit(mesh)

    def fits(k: int) -> bool:
        many = with_values(pipeline, {"train.num_models": k})
        return peak_bytes(footprint(many, mesh.size, sweep=True)) * sharing <= limit

    low, high = 1, wanted  # the footprint grows with k: bisect for the largest that fits
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low


def _memory_limit(mesh: Mesh) -> tuple[int, str, int]:
    """(bytes a device may hold, where that limit comes from, devices sharing it)."""
    device = mesh.devices.flat[0]
    limit, where = _device_limit(device)
    if limit is not None:
        return limit, where, 1
    # a CPU backend: the host's memory, held by each of this process's devices
    sharing = len([d for d in mesh.devices.flat if d.process_index == device.process_index])
    return host_available_bytes(), "this host has available", sharing


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


def _gb(size: int) -> str:
    return f"{size / 1e9:.1f} GB"
