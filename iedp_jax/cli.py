"""Shared command-line plumbing: ``--config`` (ml_collections, with ``--config.a.b=v`` overrides)
and ``--workdir``, the multi-process start-up (:mod:`iedp_jax.distributed`), and user errors
(a wrong folder, config value or environment variable, a diverged run) printed as their one
sentence instead of a traceback (``IEDP_TRACEBACK=1`` shows it). Flags are defined only when an
entry point runs, never on import."""

from __future__ import annotations

import os
from collections.abc import Callable

from ml_collections import ConfigDict


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is the whole story for a user: our entry points raise them with
    one sentence that says what to do."""
    return FileNotFoundError, NotADirectoryError, ValueError, FloatingPointError  # WeightsError is a ValueError


def run(main: Callable[[ConfigDict, str, dict], None], extra_flags: Callable[[], None] | None = None,
        prefix: str = "iedp") -> None:
    """Parses the flags and calls ``main(config, workdir, other_flag_values)``; a user error
    (:func:`user_errors`) exits with status 1 and ``[prefix] <its sentence>``."""
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
            main(config.value, workdir.value, flags.FLAGS.flag_values_dict())
        except user_errors() as e:
            if os.environ.get("IEDP_TRACEBACK") == "1":
                raise
            raise SystemExit(f"[{prefix}] {e}") from None

    app.run(_main)
