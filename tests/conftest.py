"""Test-session setup.

- A persistent XLA compilation cache shared by the tests (and the processes they start) of one
  run: several trainer tests compile the same train step (a fresh run, a resumed run, ...), and
  every compilation after the first becomes a lookup.
- Parallel runs (pytest-xdist, ``-n auto --dist loadgroup`` from pyproject.toml): the tests of a
  module stay on one worker (their module fixtures are built once) unless a test names its own
  ``xdist_group``; the long groups are handed out first so that no worker starts one last.
- The long groups are marked ``slow``: ``pytest -m "not slow"`` is the quick tier for a
  development loop; CI runs everything.
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

# Groups that take minutes, in the order they are handed out (with --no-loadscope-reorder xdist
# keeps this order). Measured on 2 cores in parallel (2026-11-30, whole suite 25.5 min): test_multiprocess
# ~7 min, seg_learns ~6 min, test_train ~4 min, kill-anywhere resume ~3 min, depth_learns ~3 min,
# trainer_features ~5 min, fsdp ~3 min, ade_config / nyu_config ~2 min each, test_torch_train_step
# ~1.5 min, the VPD ladder ~1 min; memory_plan (mid-size compiles, 2026-12-07) ~5 min. On 2026-12-08,
# with benchmarks running beside it, the whole suite took 53.5 min: memory_plan ~18 min (its bf16
# compile alone 11), the new datasets' train + evaluate groups 1.5-2.7 min each, the VPD ladder ~4 min.
LONG_FIRST = ("test_multiprocess", "memory_plan", "seg_learns", "test_train", "depth_learns", "trainer_features",
              "ade_config",
              "nyu_config", "predict", "fsdp", "test_vpd_ladder", "datasets_folder_depth", "datasets_folder_seg",
              "datasets_kitti", "datasets_cityscapes", "diffseg_configs", "test_torch_train_step",
              "test_reliability_kill")


def _group(item: pytest.Item) -> str:
    return item.get_closest_marker("xdist_group").args[0]


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(Path(str(item.fspath)).stem))
        if _group(item) in LONG_FIRST:
            item.add_marker(pytest.mark.slow)  # the quick tier: pytest -m "not slow"
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda it: rank.get(_group(it), len(rank)))  # stable
