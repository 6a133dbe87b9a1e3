"""What a run computes on: the backend, its devices and numerics, and the flags XLA needs first.

XLA's GPU compiler picks among matmul algorithms by timing them (autotuning) at each
compilation, and some GPU kernels add in whatever order their threads finish. So without help
the same program compiled twice, or read back from the persistent compilation cache, can give
different bits. `--xla_gpu_deterministic_ops=true` removes both. XLA reads XLA_FLAGS once, when
JAX starts its backend, which is why `train.deterministic` is applied by the entry points
(`train_pipeline`, `load_trained`) before they touch a device, and why a backend that already
started without it is refused rather than silently nondeterministic. CPU and TPU programs are
deterministic either way; there the flag changes nothing.

XLA:CPU's programs are deterministic, but not independent of the host: it blocks a matmul's sum
by the threads it computes it with, so the bits depend on how many threads its pool has (the
host's cores, by default) and on how many simulated devices share them. Its CPU client sizes
that pool from $NPROC when it is set, so a deterministic run pins it (`CPU_THREADS`), before the
backend starts, as it does XLA_FLAGS: one host's bits are then every host's with the same CPU
instructions, whatever its cores, and a program's models keep their bits on any number of
simulated devices (docs/accelerators.md).
"""

from __future__ import annotations

import os
import re
from importlib import metadata
from typing import Any

from digitsjax.core.config import Pipeline
from digitsjax.core.placement import Placement
from digitsjax.errors import UserError, setting

DETERMINISTIC_OPS = "--xla_gpu_deterministic_ops=true"
_DETERMINISM_FLAG = DETERMINISTIC_OPS.split("=")[0]
CPU_THREADS_ENV = "NPROC"
CPU_THREADS = 8
"""The size of XLA:CPU's thread pool in a deterministic run, unless $NPROC says otherwise: as
many threads as most hosts have cores or more, and one whose matmuls round as most hosts'."""


def xla_flags() -> list[str]:
    """The XLA flags of this process: once the backend started, those it runs with."""
    return os.environ.get("XLA_FLAGS", "").split()


def backend_started() -> bool:
    """Whether JAX has created its backends (and so read XLA_FLAGS) in this process."""
    from jax._src import xla_bridge  # the one place that knows; no public API says it

    started = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(started and started())


def request_determinism(deterministic: bool) -> None:
    """Put XLA's GPU determinism in XLA_FLAGS before the backend starts, if asked for.

    Also pins XLA:CPU's threads (`CPU_THREADS`), unless $NPROC is set. `deterministic=False`
    leaves the flags and threads as the user set them. A GPU backend that already started
    without the flag cannot be changed: that is a `UserError`, not a quiet difference.
    """
    if not deterministic:
        return
    if not backend_started():
        os.environ.setdefault(CPU_THREADS_ENV, str(CPU_THREADS))
        if DETERMINISTIC_OPS not in xla_flags():
            kept = [flag for flag in xla_flags() if flag.split("=")[0] != _DETERMINISM_FLAG]
            os.environ["XLA_FLAGS"] = " ".join([*kept, DETERMINISTIC_OPS])
        return
    if DETERMINISTIC_OPS in xla_flags():
        return
    import jax

    if jax.default_backend() == "gpu":
        raise UserError(
            "JAX started its GPU backend before digitsjax could make it deterministic "
            "(train.deterministic = true)",
            f"start Python with XLA_FLAGS={DETERMINISTIC_OPS}, or call "
            "digitsjax.run.backend.request_determinism(True) before any JAX computation, or "
            f"train with {setting('train.deterministic', 'false')}")


def describe(pipeline: Pipeline) -> dict[str, Any]:
    """Where and how this process computes `pipeline`: for the first line of a run and JSON."""
    import jax

    devices = jax.devices()
    return {"backend": jax.default_backend(), "device_count": len(devices),
            "device_kind": devices[0].device_kind,
            "matmul_precision": pipeline.train.matmul_precision,
            "deterministic": _deterministic_in_force(),
            "cpu_threads": cpu_threads(),
            "xla_flags": xla_flags()}


def cpu_threads() -> int | None:
    """The threads XLA:CPU was told to compute with ($NPROC), or None: as many as the cores."""
    value = os.environ.get(CPU_THREADS_ENV, "")
    return int(value) if value.isdigit() else None


def _deterministic_in_force() -> bool:
    """CPU and TPU programs always are; GPU programs only with the flag."""
    import jax

    return jax.default_backend() != "gpu" or DETERMINISTIC_OPS in xla_flags()


def summary_line(info: dict[str, Any], placement: Placement | None = None) -> str:
    """`describe`'s answer as `cpu backend, 1 device (cpu), matmul_precision float32, ...`;
    with a `placement` of several models or devices, how they are placed after the devices."""
    count = info["device_count"]
    placed = f": {placement.line()}" if placement is not None and \
        (placement.models > 1 or placement.devices > 1) else ""
    return (f"{info['backend']} backend, {count} device{'s' if count > 1 else ''} "
            f"({info['device_kind']}){placed}, matmul_precision {info['matmul_precision']}, "
            + ("deterministic" if info["deterministic"] else "not deterministic"))


# How to get each accelerator's JAX build (`make install ACCEL=...`), by the platform name
# JAX_PLATFORMS uses ("gpu" is JAX's alias for cuda and rocm): (its plugin, the remedy).
ACCELERATOR_BUILDS = {
    "cuda": ("CUDA", "install the GPU build with `make install ACCEL=cuda` (ACCEL=cuda12 for "
                     "NVIDIA drivers older than 580) on a host with an NVIDIA GPU"),
    "tpu": ("TPU", "install the TPU build with `make install ACCEL=tpu` on a Cloud TPU VM"),
}
ACCELERATOR_BUILDS["gpu"] = ACCELERATOR_BUILDS["cuda"]
OTHER_PLATFORM = ("accelerator", "digitsjax installs JAX for cpu, cuda and tpu "
                  "(`make install ACCEL=cuda|cuda12|tpu`)")
_PLUGIN = re.compile(r"jax[-_](cuda|rocm)\d*[-_](plugin|pjrt)|libtpu", re.IGNORECASE)
_JAX_FAILURE = re.compile(r"Unable to initialize backend '([^']*)': (.*?)\.?"
                          r"( \((set JAX_PLATFORMS|you may need).*)?", re.DOTALL)


def start_backend(deterministic: bool) -> None:
    """Start JAX's backend now, with `deterministic`'s XLA flag first, so that a platform JAX
    cannot start (JAX_PLATFORMS=cuda with the CPU-only jaxlib, say) is a one-line `UserError`
    saying what is installed, not a traceback from wherever the first array happens to be made.

    jax 0.10 raises RuntimeError ("Unable to initialize backend ...") for a platform it cannot
    start, and a bare AssertionError when the only platform asked for is cuda and no NVIDIA GPU
    is visible; both come from its first device query, here.
    """
    import jax

    request_determinism(deterministic)
    try:
        jax.devices()
    except (RuntimeError, AssertionError) as error:
        raise _unavailable(error) from None


def _unavailable(error: Exception) -> UserError:
    """What JAX could not start and why, what is installed, and how to install what is not."""
    import jax

    requested = (jax.config.jax_platforms or "").lower()
    failed = _JAX_FAILURE.fullmatch(str(error))
    platform = failed.group(1) if failed else requested.split(",")[0]
    reason = failed.group(2) if failed else "no NVIDIA GPU is visible"  # jax's bare assert
    wanted = next((p for p in requested.split(",") if p in ACCELERATOR_BUILDS), platform)
    plugin, remedy = ACCELERATOR_BUILDS.get(wanted, OTHER_PLATFORM)
    asked = f"the backend JAX_PLATFORMS asks for ({requested!r})" if requested else \
        f"its {platform!r} backend"
    fallback = ", or unset JAX_PLATFORMS to compute on the CPU" if requested else ""
    return UserError(f"JAX cannot start {asked}: {reason}; installed: {_installed(plugin)}",
                     remedy + fallback)


def _installed(plugin: str) -> str:
    """`jax 0.10.2, jaxlib 0.10.2, no CUDA plugin (the CPU-only build)`, or the plugins."""
    plugins = sorted({dist.metadata["Name"] for dist in metadata.distributions()
                      if _PLUGIN.fullmatch(dist.metadata["Name"] or "")})
    return (f"jax {metadata.version('jax')}, jaxlib {metadata.version('jaxlib')}, "
            + (", ".join(plugins) if plugins else f"no {plugin} plugin (the CPU-only build)"))
