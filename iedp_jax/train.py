"""Train IEDP: ``python -m iedp_jax.train --config smoke_seg --workdir /tmp/iedp``.

Runs :func:`iedp_jax.trainer.train`: one jitted, sharded train step, orbax checkpoints that
resume automatically from ``--workdir`` (held by a lock, :mod:`iedp_jax.infra.lock`, so a second run
on the same workdir stops at once), TensorBoard events and ``metrics.jsonl``, a progress
bar, and at the end an evaluation on the validation split written to ``results.json``. Override
any config field with ``--config.section.key=value``; unknown keys are an error. An entry point
only: nothing imports it.
"""

from __future__ import annotations

import math

from absl import flags
from ml_collections import ConfigDict

from iedp_jax.configs import FOLDER as CONFIGS
from iedp_jax.data.catalog import task_of
from iedp_jax.eval.plan import protocol_from_config
from iedp_jax.infra.cli import require_sizes, run
from iedp_jax.infra.errors import ConfigError
from iedp_jax.infra.lock import workdir_lock
from iedp_jax.sd.weights import WeightsError
from iedp_jax.trainer import check_workdir, train

# Sizes a run needs (a zero or negative one fails here, naming the flag, before anything loads).
POSITIVE = ("train.total_steps", "train.batch_size", "train.grad_accum_steps", "train.log_every", "train.ckpt_every",
            "train.keep_checkpoints", "train.eval_batch_size", "data.crop_size")
NON_NEGATIVE = ("train.eval_every", "train.num_panels")


def check_rates(config: ConfigDict) -> None:
    """The learning rate must be a positive finite number (a NaN would compile and then diverge;
    zero or negative trains nothing or backwards): refused before anything loads or compiles."""
    for key, low in (("lr", "positive"), ("unet_lr_mult", "zero or positive")):
        value = config.optim[key]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
            value > 0 if low == "positive" else value >= 0)
        if not ok:
            raise ConfigError(f"--config.optim.{key}={value!r} must be a {low} finite number (the shipped configs "
                              f"use e.g. {8e-5 if key == 'lr' else 0.1}).")


def main(config: ConfigDict, workdir: str, flag_values: dict) -> None:
    require_sizes(config, POSITIVE, NON_NEGATIVE)
    check_rates(config)
    protocol_from_config(config, task_of(config.data.name))  # eval windows, scales, mode: before compiling
    check_workdir(config, workdir)
    with workdir_lock(workdir):  # a second run on this workdir stops here, naming the first
        train(config, workdir, flag_values.get("stop_after"))


def _define_flags() -> None:
    flags.DEFINE_integer("stop_after", None, "Stop once this global step is trained and checkpointed, without "
                         "evaluating (e.g. to fit a job slot); rerun without it to resume.")


def entry() -> None:
    """The console script (the same as ``python -m iedp_jax.train``)."""
    run(main, _define_flags, user_errors=(WeightsError,), configs=CONFIGS)


if __name__ == "__main__":
    entry()
