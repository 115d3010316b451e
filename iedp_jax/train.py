"""Train IEDP: ``python -m iedp_jax.train --config configs/smoke_seg.py --workdir /tmp/iedp``.

Runs :func:`iedp_jax.trainer.train`: one jitted, sharded train step, orbax checkpoints that
resume automatically from ``--workdir``, TensorBoard events and ``metrics.jsonl``, a progress
bar, and at the end an evaluation on the validation split written to ``results.json``. Override
any config field with ``--config.section.key=value``; unknown keys are an error. An entry point
only: nothing imports it.
"""

from __future__ import annotations

from absl import flags
from ml_collections import ConfigDict

from iedp_jax.infra.cli import run
from iedp_jax.sd.weights import WeightsError
from iedp_jax.trainer import train


def main(config: ConfigDict, workdir: str, flag_values: dict) -> None:
    train(config, workdir, flag_values.get("stop_after"))


def _define_flags() -> None:
    flags.DEFINE_integer("stop_after", None, "Stop once this global step is trained and checkpointed, without "
                         "evaluating (e.g. to fit a job slot); rerun without it to resume.")


if __name__ == "__main__":
    run(main, _define_flags, user_errors=(WeightsError,))
