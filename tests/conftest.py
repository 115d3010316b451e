"""Test-session setup.

- A persistent XLA compilation cache shared by the tests (and the processes they start) of one
  run: several trainer tests compile the same train step (a fresh run, a resumed run, ...), and
  every compilation after the first becomes a lookup.
- Parallel runs (pytest-xdist, ``-n auto --dist loadgroup`` from pyproject.toml): the tests of a
  module stay on one worker (their module fixtures are built once) unless a test names its own
  ``xdist_group``; the long modules are handed out first so that no worker starts one last.
"""

import os
import tempfile
from pathlib import Path

import jax
import pytest

_CACHE = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="iedp_jax_cache_"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# The modules that take minutes (measured: test_train ~12 min, test_multiprocess ~6 min serially).
LONG_FIRST = ("test_train.py", "test_multiprocess.py", "test_torch_train_step.py")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(Path(str(item.fspath)).stem))
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda it: rank.get(Path(str(it.fspath)).name, len(rank)))  # stable
