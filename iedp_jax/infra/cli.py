"""Shared command-line plumbing: ``--config`` (ml_collections, with ``--config.a.b=v`` overrides)
and ``--workdir``, the multi-process start-up (:mod:`iedp_jax.infra.distributed`), and user errors
(:class:`~iedp_jax.infra.errors.UserError` and the extra types an entry point names, e.g. the
backbone's ``WeightsError``) printed as their one sentence instead of a traceback
(``IEDP_TRACEBACK=1`` shows it). Any other exception is a bug and keeps its traceback. Flags are
defined only when an entry point runs, never on import."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import Any

from absl import app, flags, logging
from ml_collections import ConfigDict, config_flags

from iedp_jax.infra import distributed
from iedp_jax.infra.errors import ConfigError, UserError


def require_sizes(config: ConfigDict, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = ()) -> None:
    """Checks size fields of ``config`` (dotted keys; a tuple field checks every entry): a zero or
    negative size is a :class:`ConfigError` naming the flag, before anything is loaded."""
    for keys, low, words in ((positive, 1, "positive"), (non_negative, 0, "zero or positive")):
        for key in keys:
            value = config
            for part in key.split("."):
                value = value[part]
            entries = value if isinstance(value, (tuple, list)) else (value,)
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in entries):
                raise ConfigError(f"--config.{key}={value!r} must be {words} (whole numbers).")


# (height, width) fields: one number given (``--config.data.crop_size=512``) means a square.
SQUARE_PAIRS = ("data.crop_size", "eval.crop", "eval.stride", "eval.img_scale")
FIXED_LENGTH = {"mesh.shape": 2}  # tuple fields of one length: another is refused in one sentence


def _field(config: ConfigDict, key: str) -> tuple[Any, Any, str] | None:
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
        if not isinstance(node, ConfigDict) or part not in node:
            return None
        node = node[part]
    return (node, node[leaf], leaf) if isinstance(node, ConfigDict) and leaf in node else None


def normalise_pairs(config: ConfigDict) -> None:
    """``(512,)`` (what ``--config.data.crop_size=512`` parses to) becomes ``(512, 512)`` for the
    (height, width) fields; a pair field or a fixed-length field of another length is a
    :class:`ConfigError` naming the flag."""
    for key in SQUARE_PAIRS:
        if (found := _field(config, key)) is None:
            continue
        node, value, leaf = found
        if isinstance(value, (tuple, list)) and len(value) == 1:
            node[leaf] = (value[0], value[0])
        elif isinstance(value, (tuple, list)) and len(value) not in (0, 2):
            raise ConfigError(f"--config.{key}={tuple(value)} must be (height, width), or one number for a square.")
    for key, length in FIXED_LENGTH.items():
        if (found := _field(config, key)) is not None and isinstance(found[1], (tuple, list)) \
                and len(found[1]) != length:
            raise ConfigError(f"--config.{key}={tuple(found[1])} must have {length} entries, e.g. "
                              f"--config.{key}='(-1, 1)'.")


def _flag_value(argv: list[str], name: str) -> str | None:
    """The value of ``--name=v`` / ``--name v`` in ``argv`` (None when absent)."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _has_config_file(argv: list[str]) -> bool:
    return any(a == "--config" or a.startswith("--config=") for a in argv)


def _exit_on_user_error(prefix: str, user_errors: tuple[type[BaseException], ...], fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (UserError, *user_errors) as e:
        if os.environ.get("IEDP_TRACEBACK") == "1":
            raise
        raise SystemExit(f"[{prefix}] {e}") from None


def run(main: Callable[[ConfigDict, str, dict], None], extra_flags: Callable[[], None] | None = None,
        prefix: str = "iedp", user_errors: tuple[type[BaseException], ...] = (),
        config_from_workdir: Callable[[str], ConfigDict] | None = None, argv: list[str] | None = None) -> None:
    """Parses the flags and calls ``main(config, workdir, other_flag_values)``; a
    :class:`~iedp_jax.infra.errors.UserError` (or one of ``user_errors``) exits with status 1 and
    ``[prefix] <its sentence>``.

    With ``config_from_workdir``, ``--config`` is optional: without it the config is
    ``config_from_workdir(WORKDIR)`` (the run's saved config), still overridable with
    ``--config.a.b=value``.
    """
    argv = list(sys.argv if argv is None else argv)
    workdir_arg = _flag_value(argv, "workdir")
    if config_from_workdir is not None and not _has_config_file(argv) and workdir_arg:
        saved = _exit_on_user_error(prefix, user_errors, lambda: config_from_workdir(workdir_arg))
        config = config_flags.DEFINE_config_dict(
            "config", saved, "The run's saved config (WORKDIR/config.json); override fields with --config.a.b=value.",
            lock_config=True)
    else:
        config = config_flags.DEFINE_config_file(
            "config", None, "Config file, e.g. configs/ade.py; override fields with --config.a.b=value"
            + ("; default: the run's saved config in WORKDIR." if config_from_workdir else "."), lock_config=True)
        flags.mark_flag_as_required("config")
    workdir = flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and results.")
    if extra_flags:
        extra_flags()
    flags.mark_flag_as_required("workdir")

    def _main(args: list[str]) -> None:
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # orbax logs every file write at INFO
        if len(args) > 1:
            raise app.UsageError(f"unexpected arguments {args[1:]}: every option is a --flag.")

        def start() -> None:
            distributed.initialize()  # before anything touches a device
            normalise_pairs(config.value)
            main(config.value, workdir.value, flags.FLAGS.flag_values_dict())

        _exit_on_user_error(prefix, user_errors, start)

    def _parse(args: list[str]) -> list[str]:
        try:
            return app.parse_flags_with_usage(args)
        except (AttributeError, KeyError, TypeError, ValueError) as e:  # an override the config cannot take
            if os.environ.get("IEDP_TRACEBACK") == "1":
                raise
            why = " ".join(re.sub(r"\\n|\\'|\\\"", " ", str(e)).replace("'", "").split())
            raise SystemExit(f"[{prefix}] a --config override does not fit the config ({why}): the keys and "
                             "their types are those of the config file.") from None

    app.run(_main, argv=argv, flags_parser=_parse)
