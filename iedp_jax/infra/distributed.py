"""Multi-process start-up: ``jax.distributed.initialize`` when the run spans processes.

Called by every entry point before anything touches a device (:func:`iedp_jax.infra.cli.run`):

1. ``IEDP_COORDINATOR_ADDRESS``, ``IEDP_NUM_PROCESSES`` and ``IEDP_PROCESS_ID`` set (the
   launch scripts in ``launch/`` set them): initialise with those values.
2. Under SLURM with more than one task, or on a multi-host Cloud TPU slice: initialise with no
   arguments (JAX reads the cluster itself).
3. Otherwise: one process, nothing to do.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
from jax._src import distributed as _runtime  # the runtime's key-value client (no public handle yet)
from jax.experimental import multihost_utils

from iedp_jax.infra.errors import ConfigError

ENV_COORDINATOR = "IEDP_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "IEDP_NUM_PROCESSES"
ENV_PROCESS_ID = "IEDP_PROCESS_ID"
_ENV = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)

_initialized = False


def explicit_settings(env: Mapping[str, str]) -> tuple[str, int, int] | None:
    """``(coordinator, num_processes, process_id)`` from the IEDP_* variables, None when none
    is set; a partial or malformed set is an error that names what to fix."""
    given = [k for k in _ENV if env.get(k)]
    if not given:
        return None
    if len(given) != len(_ENV):
        missing = [k for k in _ENV if k not in given]
        raise ConfigError(f"{', '.join(given)} set but {', '.join(missing)} not: set all three "
                         "(launch/local_multiprocess.sh and launch/gpu_slurm.sbatch do) or none.")
    try:
        n, i = int(env[ENV_NUM_PROCESSES]), int(env[ENV_PROCESS_ID])
    except ValueError as e:
        raise ConfigError(f"{ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} must be integers, got "
                         f"{env[ENV_NUM_PROCESSES]!r} and {env[ENV_PROCESS_ID]!r}.") from e
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"{ENV_PROCESS_ID}={i} must lie in [0, {ENV_NUM_PROCESSES}={n}).")
    return env[ENV_COORDINATOR], n, i


def cluster_detected(env: Mapping[str, str]) -> bool:
    """True under a multi-task SLURM job or on a multi-host TPU slice (JAX auto-detects both)."""
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return True
    hosts = env.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h]) > 1


def initialize(env: Mapping[str, str] | None = None) -> bool:
    """Starts the JAX distributed runtime when this run spans processes; True when it did (or
    already had). Idempotent."""
    global _initialized
    if _initialized:
        return True
    env = os.environ if env is None else env
    explicit = explicit_settings(env)
    if explicit is not None:
        coordinator, n, i = explicit
        if n == 1:
            return False
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=n, process_id=i)
    elif cluster_detected(env):
        jax.distributed.initialize()
    else:
        return False
    _initialized = True
    return True


_barriers: dict[str, int] = {}


def barrier(name: str, timeout_s: int = 3600) -> None:
    """Waits until every process reaches ``name`` (no-op for one process).

    Uses the coordination service's key-value barrier, not a device collective: it has its own
    (long) timeout, while a collective's first use times out after seconds on CPU (gloo), e.g.
    when one process compiles a step more slowly than another.
    """
    if jax.process_count() == 1:
        return
    client = _runtime.global_state.client
    if client is None:  # initialised outside this module without a client: fall back
        multihost_utils.sync_global_devices(name)
        return
    n = _barriers[name] = _barriers.get(name, 0) + 1  # barrier ids must be unique per use
    client.wait_at_barrier(f"iedp:{name}:{n}", timeout_in_ms=timeout_s * 1000)
