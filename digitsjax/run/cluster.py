"""Several processes, one run: JAX's own distributed runtime, barriers and shared decisions.

Processes join through `jax.distributed.initialize` before anything touches a device: from
flags or DIGITSJAX_* variables, else from JAX's own detection of Cloud TPU VMs, Slurm, Open
MPI and Kubernetes. On CPU, processes all-reduce through gloo, JAX's default CPU collectives.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import jax
import numpy as np
from jax.experimental import multihost_utils

from digitsjax import errors
from digitsjax.errors import ClusterError, UserError

ADDRESS_ENV = "DIGITSJAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "DIGITSJAX_NUM_PROCESSES"
PROCESS_ID_ENV = "DIGITSJAX_PROCESS_ID"
_FLAGS = f"--coordinator-address HOST:PORT --num-processes N --process-id I (or {ADDRESS_ENV}, " \
         f"{NUM_PROCESSES_ENV}, {PROCESS_ID_ENV})"

@dataclass(frozen=True)
class Cluster:
    """How this process joins a run. All None: JAX detects a cluster, or the run is one process."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def resolve_cluster(coordinator_address: str | None = None, num_processes: int | None = None,
                    process_id: int | None = None,
                    environ: Mapping[str, str] | None = None) -> Cluster:
    """Flags, else DIGITSJAX_* environment variables; checked here, before JAX waits on them."""
    environ = os.environ if environ is None else environ
    address = coordinator_address or environ.get(ADDRESS_ENV) or None
    count = num_processes if num_processes is not None else _env_int(environ, NUM_PROCESSES_ENV)
    index = process_id if process_id is not None else _env_int(environ, PROCESS_ID_ENV)
    if count is not None and count < 1:
        raise ClusterError(f"--num-processes must be >= 1, got {count}")
    if count == 1 and index in (None, 0):
        return Cluster(num_processes=1)  # explicitly alone: no cluster detection either
    given = {"--coordinator-address": address, "--num-processes": count, "--process-id": index}
    missing = [flag for flag, value in given.items() if value is None]
    if len(missing) == len(given):
        return Cluster()
    if missing:
        raise ClusterError(f"{' and '.join(missing)} missing: every process of a multi-process "
                           f"run needs {_FLAGS}")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or " " in address:
        raise ClusterError(f"--coordinator-address {address!r} must be HOST:PORT, the address "
                           "of process 0 and a free port, e.g. 10.0.0.1:1234")
    if not 0 <= index < count:
        raise ClusterError(f"--process-id must be in 0..{count - 1} for --num-processes "
                           f"{count}, got {index}")
    return Cluster(address, count, index)


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ClusterError(f"${name} must be an integer, got {value!r}") from None


def initialize(cluster: Cluster) -> None:
    """Join the other processes of the run; call before JAX uses a device. Alone: a no-op."""
    if cluster.num_processes == 1:
        return
    if cluster.coordinator_address is None:
        _initialize_detected()
        return
    try:
        jax.distributed.initialize(cluster.coordinator_address, cluster.num_processes,
                                   cluster.process_id)
    except jax.errors.JaxRuntimeError as e:
        raise ClusterError(
            f"process {cluster.process_id} could not join the coordinator at "
            f"{cluster.coordinator_address} ({str(e).splitlines()[0]}); start all "
            f"{cluster.num_processes} processes with the same --coordinator-address (process "
            "0's address and a free port) and --num-processes") from None


def _initialize_detected() -> None:
    try:
        jax.distributed.initialize()
    except RuntimeError:
        # JAX already computes in this process (the CLI called from Python: a notebook, a
        # test), so it can no longer join a cluster: it runs alone, as it already does.
        return
    except ValueError as e:
        # JAX found no Cloud TPU VM, Slurm, Open MPI or Kubernetes job to read the coordinator,
        # process count and id from: a run of one process, unless JAX was half told otherwise.
        if os.environ.get("JAX_COORDINATOR_ADDRESS"):
            raise ClusterError(f"$JAX_COORDINATOR_ADDRESS is set, but JAX cannot tell the rest "
                               f"({e}); pass {_FLAGS}") from None


def is_primary() -> bool:
    """Process 0 alone writes the manifest, metrics and log lines (orbax saves collectively)."""
    return jax.process_index() == 0


def silent(_: str) -> None:
    """The echo of processes other than 0: one log per run, not one per process."""


def sync(name: str) -> None:
    """A barrier across processes, e.g. until process 0 has prepared the workdir."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is true on any: decisions all processes must share."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def least(value: int) -> int:
    """The smallest of every process's `value` on every process: a number they must share
    that each measures for itself (e.g. how many models its memory holds)."""
    if jax.process_count() == 1:
        return value
    return int(np.min(multihost_utils.process_allgather(np.asarray(value))))


@contextlib.contextmanager
def primary_first(name: str) -> Iterator[None]:
    """Process 0 runs the block before the others do, e.g. to fill a shared cache once; its
    `UserError` there stops them all (`prepared_by_primary`)."""
    if is_primary():
        with prepared_by_primary(name):
            yield
        return
    with prepared_by_primary(name):
        pass  # waits for process 0's block, and raises its error
    yield


@contextlib.contextmanager
def prepared_by_primary(name: str) -> Iterator[None]:
    """A block in which process 0 prepares what every process then uses (a workdir, a sweep
    folder), at whose end the others wait for it. A `UserError` that process 0 raises there is
    raised on every process: each says the same line and stops, where the others would wait for
    a process that has stopped, and it for them at its exit."""
    failure: UserError | None = None
    try:
        yield
    except UserError as error:
        if jax.process_count() == 1:
            raise
        failure = error
    shared = _process_0s_failure(failure, name)
    if shared is not None:
        raise (failure or shared) from None


FAILURE_BYTES = 8192
"""Room for process 0's error as every process receives it (longer ones are cut)."""


def _process_0s_failure(failure: UserError | None, name: str) -> UserError | None:
    """Process 0's `failure` (None: it succeeded), on every process; also a barrier."""
    if jax.process_count() == 1:
        return failure
    sent = np.zeros(FAILURE_BYTES, np.uint8)
    if failure is not None and is_primary():
        text = json.dumps([type(failure).__name__, failure.problem, failure.fix]).encode()
        sent[:min(len(text), FAILURE_BYTES)] = np.frombuffer(text[:FAILURE_BYTES], np.uint8)
    received = bytes(np.asarray(multihost_utils.broadcast_one_to_all(sent))).rstrip(b"\0")
    if not received:
        return None
    try:
        kind, problem, fix = json.loads(received)
    except ValueError:  # cut in the middle
        kind, problem, fix = "UserError", received.decode(errors="replace"), ""
    rebuilt = getattr(errors, kind, UserError)
    return (rebuilt if isinstance(rebuilt, type) and issubclass(rebuilt, UserError)
            else UserError)(problem, fix)
