"""Train IEDP: ``python -m iedp_jax.train --config configs/smoke_seg.py --workdir /tmp/iedp``.

Runs :func:`iedp_jax.trainer.train`: one jitted, sharded train step, orbax checkpoints that
resume automatically from ``--workdir`` (held by a lock, :mod:`iedp_jax.infra.lock`, so a second run
on the same workdir stops at once), TensorBoard events and ``metrics.jsonl``, a progress
bar, and at the end an evaluation on the validation split written to ``results.json``. Override
any config field with ``--config.section.key=value``; unknown keys are an error. An entry point
only: nothing imports it.
"""

from __future__ import annotations

from absl import flags
from ml_collections import ConfigDict

from iedp_jax.infra.cli import require_sizes, run
from iedp_jax.infra.lock import workdir_lock
from iedp_jax.sd.weights import WeightsError
from iedp_jax.trainer import check_workdir, train

# Sizes a run needs (a zero or negative one fails here, naming the flag, before anything loads).
POSITIVE = ("train.total_steps", "train.batch_size", "train.grad_accum_steps", "train.log_every", "train.ckpt_every",
            "train.keep_checkpoints", "train.eval_batch_size", "data.crop_size")
NON_NEGATIVE = ("train.eval_every", "train.num_panels")


def main(config: ConfigDict, workdir: str, flag_values: dict) -> None:
    require_sizes(config, POSITIVE, NON_NEGATIVE)
    check_workdir(config, workdir)
    with workdir_lock(workdir):  # a second run on this workdir stops here, naming the first
        train(config, workdir, flag_values.get("stop_after"))


def _define_flags() -> None:
    flags.DEFINE_integer("stop_after", None, "Stop once this global step is trained and checkpointed, without "
                         "evaluating (e.g. to fit a job slot); rerun without it to resume.")


if __name__ == "__main__":
    run(main, _define_flags, user_errors=(WeightsError,))
