"""Shared command-line plumbing: ``--config`` (ml_collections, with ``--config.a.b=v`` overrides)
and ``--workdir``, and the multi-process start-up (:mod:`iedp_jax.distributed`). Flags are
defined only when an entry point runs, never on import."""

from __future__ import annotations

from collections.abc import Callable

from ml_collections import ConfigDict


def run(main: Callable[[ConfigDict, str, dict], None], extra_flags: Callable[[], None] | None = None) -> None:
    """Parses the flags and calls ``main(config, workdir, other_flag_values)``."""
    from absl import app, flags  # noqa: PLC0415
    from ml_collections import config_flags  # noqa: PLC0415

    config = config_flags.DEFINE_config_file(
        "config", None, "Config file, e.g. configs/ade.py; override fields with --config.a.b=value.",
        lock_config=True)
    workdir = flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and results.")
    if extra_flags:
        extra_flags()
    flags.mark_flags_as_required(["config", "workdir"])

    def _main(argv: list[str]) -> None:
        from absl import logging  # noqa: PLC0415

        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # orbax logs every file write at INFO
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments {argv[1:]}: every option is a --flag.")
        from iedp_jax import distributed  # noqa: PLC0415

        try:
            distributed.initialize()  # before anything touches a device
        except ValueError as e:  # a malformed IEDP_* setting: one sentence, no traceback
            raise SystemExit(f"[iedp] {e}") from None
        main(config.value, workdir.value, flags.FLAGS.flag_values_dict())

    app.run(_main)
