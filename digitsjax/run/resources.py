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
from digitsjax.errors import ResourceError


def check_memory(pipeline: Pipeline, mesh: Mesh) -> None:
    """Refuse, in one line with the estimate, the limit and what to lower, a run that cannot fit."""
    parts = footprint(pipeline, mesh.size)
    device = mesh.devices.flat[0]
    limit, where = _device_limit(device)
    sharing = 1
    if limit is None:  # the host's memory, held by each of this process's devices
        limit, where = host_available_bytes(), "this host has available"
        sharing = len([d for d in mesh.devices.flat if d.process_index == device.process_index])
    need = peak_bytes(parts) * sharing
    if need <= limit:
        return
    largest = max(parts, key=lambda part: parts[part])
    raise ResourceError(
        f"this run needs about {_gb(need)} of memory ({_gb(parts[largest] * sharing)} for "
        f"{largest}), more than the {_gb(limit)} {where}",
        f"lower {' or '.join(KNOBS[largest])}")


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
