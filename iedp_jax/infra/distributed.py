"""Multi-process start-up: ``jax.distributed.initialize`` whenever the run spans processes.

Called by every entry point before anything touches a device (:func:`iedp_jax.infra.cli.run`).
A run spans processes when one of these says so (checked in this order):

1. ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (JAX's own names;
   ``IEDP_COORDINATOR_ADDRESS`` / ``IEDP_NUM_PROCESSES`` / ``IEDP_PROCESS_ID`` are accepted as
   aliases): initialise with those values.
2. A launcher JAX detects by itself: a SLURM step with several tasks, Open MPI (``mpirun``), a
   Kubernetes indexed Job / JobSet, a multi-host Cloud TPU slice (``TPU_WORKER_HOSTNAMES``), or
   ``IEDP_DISTRIBUTED=1`` (e.g. a GCE TPU VM slice, found through its metadata server):
   ``jax.distributed.initialize()`` with no arguments, so JAX reads the cluster itself.
3. Otherwise one process; ``IEDP_DISTRIBUTED=0`` forces this.

When a launcher is detected and start-up fails, or JAX finds fewer processes than the launcher
started, the run stops with one sentence: N copies must never train alone into one workdir.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import orbax.checkpoint as ocp

from iedp_jax.infra.errors import ConfigError

# JAX's names first; the IEDP_* names are documented aliases (launch scripts of older releases).
NAMES = {"coordinator": ("JAX_COORDINATOR_ADDRESS", "IEDP_COORDINATOR_ADDRESS"),
         "num_processes": ("JAX_NUM_PROCESSES", "IEDP_NUM_PROCESSES"),
         "process_id": ("JAX_PROCESS_ID", "IEDP_PROCESS_ID")}
ENV_SWITCH = "IEDP_DISTRIBUTED"

_initialized = False


def _first(env: Mapping[str, str], key: str) -> tuple[str, str] | None:
    """``(variable, value)`` of the first set name of ``key`` (JAX's before the alias)."""
    for name in NAMES[key]:
        if env.get(name):
            return name, env[name]
    return None


def explicit_settings(env: Mapping[str, str]) -> tuple[str, int, int] | None:
    """``(coordinator, num_processes, process_id)`` from the JAX_* (or IEDP_*) variables, None
    when none is set; a partial or malformed set, or a JAX_* and IEDP_* pair that disagree, is an
    error that names what to fix."""
    for jax_name, alias in NAMES.values():
        if env.get(jax_name) and env.get(alias) and env[jax_name] != env[alias]:
            raise ConfigError(f"{jax_name}={env[jax_name]} and its alias {alias}={env[alias]} disagree: "
                              f"unset {alias}.")
    found = {key: _first(env, key) for key in NAMES}
    given = [v[0] for v in found.values() if v]
    if not given:
        return None
    if len(given) != len(NAMES):
        missing = [NAMES[k][0] for k, v in found.items() if v is None]
        raise ConfigError(f"{', '.join(given)} set but {', '.join(missing)} not: set all three "
                          "(launch/local_multiprocess.sh and launch/gpu_slurm.sbatch do) or none.")
    (n_name, n_raw), (i_name, i_raw) = found["num_processes"], found["process_id"]
    try:
        n, i = int(n_raw), int(i_raw)
    except ValueError as e:
        raise ConfigError(f"{n_name} and {i_name} must be integers, got {n_raw!r} and {i_raw!r}.") from e
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"{i_name}={i} must lie in [0, {n_name}={n}).")
    return found["coordinator"][1], n, i


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env.get(name, "1") or 1)
    except ValueError:
        return 1


def detect_launcher(env: Mapping[str, str]) -> tuple[str, int | None] | None:
    """``(launcher, process count it started or None when unknown)`` for a multi-process launcher
    that ``jax.distributed.initialize()`` detects by itself; None for a single process."""
    if env.get(ENV_SWITCH) == "1":
        return f"{ENV_SWITCH}=1", None
    if env.get("SLURM_JOB_ID") and env.get("SLURM_STEP_NODELIST") and _int(env, "SLURM_NTASKS") > 1:
        return "SLURM (srun)", _int(env, "SLURM_NTASKS")
    if env.get("OMPI_MCA_orte_hnp_uri") and _int(env, "OMPI_COMM_WORLD_SIZE") > 1:
        return "Open MPI (mpirun)", _int(env, "OMPI_COMM_WORLD_SIZE")
    if env.get("KUBERNETES_SERVICE_HOST") and env.get("JOB_COMPLETION_INDEX"):
        return "a Kubernetes indexed Job", None
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    if len(hosts) > 1:
        return "a multi-host Cloud TPU slice", len(hosts)
    return None


def initialize(env: Mapping[str, str] | None = None) -> bool:
    """Starts the JAX distributed runtime when this run spans processes; True when it did (or
    already had). Idempotent."""
    global _initialized
    if _initialized:
        return True
    env = os.environ if env is None else env
    if env.get(ENV_SWITCH) == "0":
        return False
    explicit = explicit_settings(env)
    if explicit is not None:
        coordinator, n, i = explicit
        if n == 1:
            return False
        launcher, expected = f"{NAMES['coordinator'][0]}={coordinator}", n
        start = lambda: jax.distributed.initialize(coordinator_address=coordinator, num_processes=n,  # noqa: E731
                                                   process_id=i)
    else:
        detected = detect_launcher(env)
        if detected is None:
            return False
        launcher, expected = detected
        start = jax.distributed.initialize
    try:
        start()
    except Exception as e:  # any failure of the runtime is the same user-facing stop
        first = (str(e).strip().splitlines() or ["no message"])[0]
        raise ConfigError(f"{launcher} says this run spans processes, but jax.distributed.initialize() failed "
                          f"({type(e).__name__}: {first}): "
                          f"check the launcher's variables and that the coordinator is reachable, or set "
                          f"{ENV_SWITCH}=0 to run one process alone.") from e
    _initialized = True
    if expected is not None and jax.process_count() != expected:
        raise ConfigError(f"{launcher} started {expected} processes but JAX joined {jax.process_count()}: "
                          "every process must see the same launcher variables.")
    return True


_barriers: dict[str, int] = {}


def barrier(name: str, timeout_s: int = 3600) -> None:
    """Waits until every process reaches ``name`` (no-op for one process).

    Uses the coordination service's key-value barrier through orbax's public
    ``multihost.get_barrier_sync_fn``, not a device collective: it has its own (long) timeout,
    while a collective's first use times out after seconds on CPU (gloo), e.g. when one process
    compiles a step more slowly than another.
    """
    if jax.process_count() == 1:
        return
    n = _barriers[name] = _barriers.get(name, 0) + 1  # barrier keys must be unique per use
    ocp.multihost.get_barrier_sync_fn()(key=f"iedp:{name}:{n}", timeout_ms=timeout_s * 1000)
