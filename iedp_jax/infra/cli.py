"""Shared command-line plumbing: ``--config`` (ml_collections, with ``--config.a.b=v`` overrides)
and ``--workdir``, the multi-process start-up (:mod:`iedp_jax.infra.distributed`), and user errors
(:class:`~iedp_jax.infra.errors.UserError` and the extra types an entry point names, e.g. the
backbone's ``WeightsError``) printed as their one sentence instead of a traceback
(``IEDP_TRACEBACK=1`` shows it). Any other exception is a bug and keeps its traceback. Flags are
defined only when an entry point runs, never on import."""

from __future__ import annotations

import os
from collections.abc import Callable

from absl import app, flags, logging
from ml_collections import ConfigDict, config_flags

from iedp_jax.infra import distributed
from iedp_jax.infra.errors import UserError


def run(main: Callable[[ConfigDict, str, dict], None], extra_flags: Callable[[], None] | None = None,
        prefix: str = "iedp", user_errors: tuple[type[BaseException], ...] = ()) -> None:
    """Parses the flags and calls ``main(config, workdir, other_flag_values)``; a
    :class:`~iedp_jax.infra.errors.UserError` (or one of ``user_errors``) exits with status 1 and
    ``[prefix] <its sentence>``."""
    config = config_flags.DEFINE_config_file(
        "config", None, "Config file, e.g. configs/ade.py; override fields with --config.a.b=value.",
        lock_config=True)
    workdir = flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and results.")
    if extra_flags:
        extra_flags()
    flags.mark_flags_as_required(["config", "workdir"])

    def _main(argv: list[str]) -> None:
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # orbax logs every file write at INFO
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments {argv[1:]}: every option is a --flag.")
        try:
            distributed.initialize()  # before anything touches a device
            main(config.value, workdir.value, flags.FLAGS.flag_values_dict())
        except (UserError, *user_errors) as e:
            if os.environ.get("IEDP_TRACEBACK") == "1":
                raise
            raise SystemExit(f"[{prefix}] {e}") from None

    app.run(_main)
