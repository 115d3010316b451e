"""Evaluate a trained IEDP checkpoint with the published protocols:
``python -m iedp_jax.evaluate --workdir DIR [--checkpoint PATH] [--config.eval.mode=multiscale]``.

The config is the run's own (``DIR/config.json``, written by the trainer; ``--config FILE`` with
overrides replaces it). Restores the checkpoint ``eval.checkpoint`` names (``final``: the latest
step of ``DIR/checkpoints``; ``best``: the best-by-validation one in ``DIR/best``) or
``--checkpoint``; ``results.json`` says which (``checkpoint_kind``). Scores it with the protocol of ``config.eval``
(:func:`iedp_jax.eval.runner.evaluate_checkpoint`), and writes ``DIR/eval/results.json`` (also
``results_<mode>.json``) and ``eval.num_visualizations`` ``image | prediction | ground truth``
PNGs under ``DIR/eval/images/``. An entry point only: nothing imports it.
"""

from __future__ import annotations

from absl import flags
from ml_collections import ConfigDict

from iedp_jax.configs import FOLDER as CONFIGS
from iedp_jax.eval.runner import evaluate_checkpoint
from iedp_jax.infra.cli import run
from iedp_jax.infra.errors import check_writable
from iedp_jax.infra.paths import as_path, is_local
from iedp_jax.run_files import read_config
from iedp_jax.sd.weights import WeightsError


def main(config: ConfigDict, workdir: str, flag_values: dict) -> None:
    if is_local(workdir) and as_path(workdir).is_dir():  # read-only or full: one sentence now, not at the end
        check_writable(as_path(workdir) / "eval", "the evaluation results")
    evaluate_checkpoint(config, workdir, flag_values.get("checkpoint") or None)


def _define_flags() -> None:
    flags.DEFINE_string("checkpoint", None, "A checkpoint step folder (WORKDIR/checkpoints/STEP) or a folder of "
                        "them; default: the one config.eval.checkpoint names (final: the latest step in "
                        "WORKDIR/checkpoints; best: WORKDIR/best).")


def entry() -> None:
    """The console script (the same as ``python -m iedp_jax.evaluate``)."""
    run(main, _define_flags, user_errors=(WeightsError,), config_from_workdir=read_config, configs=CONFIGS)


if __name__ == "__main__":
    entry()
