"""Shared command-line plumbing: ``--config`` (ml_collections, with ``--config.a.b=v`` overrides)
and ``--workdir``, the multi-process start-up (:mod:`iedp_jax.infra.distributed`), and user errors
(:class:`~iedp_jax.infra.errors.UserError` and the extra types an entry point names, e.g. the
backbone's ``WeightsError``) printed as their one sentence instead of a traceback
(``IEDP_TRACEBACK=1`` shows it). Any other exception is a bug and keeps its traceback. Flags are
defined only when an entry point runs, never on import."""

from __future__ import annotations

import ast
import inspect
import os
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
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


# ------------------------------------------------------------------------------ shipped configs, help


def _role(match: re.Match) -> str:
    target = match.group(1).split("<")[0].strip() or match.group(1)
    return target.rsplit(".", 1)[-1] if target.startswith("~") else target


def plain_text(doc: str) -> str:
    """``doc`` with its reStructuredText / Sphinx markup removed, for a terminal: a role such as
    ``:func:`~a.b``` becomes ``b`` (``a.b`` without the tilde), double backquotes and bold stars
    are dropped."""
    text = re.sub(r":[a-z]+:`([^`]+)`", _role, doc)
    text = text.replace("``", "")
    return re.sub(r"\*\*([^*\n]+)\*\*", r"\1", text)


def _first_sentence(doc: str) -> str:
    paragraph = " ".join(doc.strip().split("\n\n", 1)[0].split())
    match = re.search(r"(?<=\.)(\s|$)", paragraph)
    return plain_text(paragraph[:match.start()] if match else paragraph)


def shipped_configs(folder: str | os.PathLike) -> dict[str, str]:
    """``{name: one-line purpose}`` of the config files in ``folder`` (a package's ``configs/``),
    sorted by name; the purpose is the first sentence of each file's docstring, read without
    importing it."""
    out = {}
    for path in sorted(Path(folder).glob("*.py")):
        if path.name.startswith("_"):
            continue
        doc = ast.get_docstring(ast.parse(path.read_text(), str(path))) or ""
        out[path.stem] = _first_sentence(doc)
    return out


def config_listing(folder: str | os.PathLike) -> str:
    """The text of ``--list-configs``: one line per shipped config, its name and its purpose."""
    configs = shipped_configs(folder)
    width = max((len(n) for n in configs), default=0)
    return "\n".join(f"{name:<{width}}  {purpose}" for name, purpose in configs.items())


def resolve_config(value: str, folder: str | os.PathLike | None) -> str:
    """The config file ``--config value`` means: an existing file as it is, else a shipped config
    of ``folder`` by name (``ade``, ``smoke_seg``, or ``ade.py``); ml_collections' ``FILE:ARGS``
    suffix is kept. Anything else is a :class:`ConfigError` listing the names."""
    base, sep, rest = value.partition(":")
    if Path(base).expanduser().is_file() or folder is None:
        return value
    name = base[:-3] if base.endswith(".py") else base
    if name and "/" not in base and os.sep not in base and (Path(folder) / f"{name}.py").is_file():
        return str(Path(folder) / f"{name}.py") + sep + rest
    names = ", ".join(shipped_configs(folder))
    raise ConfigError(f"--config {value} is neither a config file nor a shipped config: pass a file path or one of "
                      f"{names} (--list-configs says what each is).")


def _resolve_config_args(argv: list[str], folder: str | os.PathLike | None) -> list[str]:
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + resolve_config(arg.split("=", 1)[1], folder)
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = resolve_config(out[i + 1], folder)
    return out


def prog_name(module: str, argv0: str | None = None) -> str:
    """How the user started the command: ``python -m module`` for ``python -m``, else the console
    script's name (``iedp-train``)."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    name = os.path.basename(argv0)
    return f"python -m {module}" if not name or name.endswith(".py") or name == "-c" else name


# The value a flag takes, as --help shows it; the same word for the same idea in every command.
METAVARS = {"config": "NAME|FILE", "workdir": "DIR", "out": "DIR", "checkpoint": "PATH", "image": "PATH",
            "stop_after": "STEP"}


def _metavar(name: str) -> str:
    if name in METAVARS:
        return METAVARS[name]
    return "N" if flags.FLAGS[name].flag_type() in ("int", "float") else "VALUE"


def _flag_lines(names: Sequence[str], extra: Sequence[tuple[str, str]] = ()) -> list[str]:
    lines = []
    rows = []
    for name in names:
        flag = flags.FLAGS[name]
        meta = "" if flag.boolean else " " + _metavar(name)
        default = "" if flag.default in (None, "", False) or name == "config" else f" (default: {flag.default})"
        also = f" (also --{name.replace('_', '-')})" if "_" in name else ""
        rows.append((f"--{name}{meta}{also}", plain_text(" ".join(str(flag.help).split())) + default))
    rows += list(extra)
    for head, text in rows:
        lines.append(f"  {head}")
        lines += textwrap.wrap(text, 100, initial_indent="      ", subsequent_indent="      ")
    return lines


def help_text(prog: str, doc: str, names: Sequence[str], required: Sequence[str],
              has_configs: bool) -> str:
    """The plain-text ``--help``: usage, the entry point's docstring without markup, and the
    flags a user needs (``--config``, ``--workdir`` and the command's own)."""
    usage = " ".join([prog, *(f"--{n} {_metavar(n)}" for n in required), "[flags]"])
    extra = [("--list-configs", "Print the shipped configs, one name and purpose a line, and exit.")] \
        if has_configs else []
    extra += [("--config.a.b=VALUE", "Override one config field (an unknown key or a wrong type is an error)."),
              ("--helpfull", "Every flag, JAX's and absl's included.")]
    body = inspect.cleandoc(plain_text(doc or ""))
    return "\n".join([f"usage: {usage}", "", body, "", "flags:", *_flag_lines(names, extra), ""])


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


def _is_required(name: str) -> bool:
    """Whether ``--name`` was marked required (absl keeps that as a validator on the flag)."""
    return any("must have a value other than None" in str(getattr(v, "message", ""))
               for v in getattr(flags.FLAGS[name], "validators", ()))


HELP_FLAGS = ("--help", "-h", "-?", "--helpshort")


def run(main: Callable[[ConfigDict, str, dict], None], extra_flags: Callable[[], None] | None = None,
        prefix: str = "iedp", user_errors: tuple[type[BaseException], ...] = (),
        config_from_workdir: Callable[[str], ConfigDict] | None = None, argv: list[str] | None = None,
        configs: str | os.PathLike | None = None) -> None:
    """Parses the flags and calls ``main(config, workdir, other_flag_values)``; a
    :class:`~iedp_jax.infra.errors.UserError` (or one of ``user_errors``) exits with status 1 and
    ``[prefix] <its sentence>``.

    With ``config_from_workdir``, ``--config`` is optional: without it the config is
    ``config_from_workdir(WORKDIR)`` (the run's saved config), still overridable with
    ``--config.a.b=value``. ``configs`` is the folder of the shipped configs: ``--config NAME``
    takes ``configs/NAME.py`` and ``--list-configs`` prints them. ``--help`` prints the entry
    point's docstring as plain text and the flags a user needs.
    """
    argv = list(sys.argv if argv is None else argv)
    if "--list-configs" in argv[1:] and configs is not None:
        print(config_listing(configs))
        return
    asked_help = any(a in HELP_FLAGS for a in argv[1:])
    if not asked_help:
        argv = _exit_on_user_error(prefix, user_errors, lambda: _resolve_config_args(argv, configs))
    workdir_arg = _flag_value(argv, "workdir")
    if config_from_workdir is not None and not _has_config_file(argv) and workdir_arg:
        saved = _exit_on_user_error(prefix, user_errors, lambda: config_from_workdir(workdir_arg))
        config = config_flags.DEFINE_config_dict(
            "config", saved, "The run's saved config (WORKDIR/config.json); override fields with --config.a.b=value.",
            lock_config=True)
    else:
        shipped = "a shipped config by name (--list-configs lists them) or a config file; " if configs else \
            "a config file; "
        config = config_flags.DEFINE_config_file(
            "config", None, "The run's config: " + shipped + "override fields with --config.a.b=value"
            + ("; default: the run's saved config in WORKDIR." if config_from_workdir else "."), lock_config=True)
        if not asked_help:
            flags.mark_flag_as_required("config")
    workdir = flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and results.")
    before = set(flags.FLAGS)
    if extra_flags:
        extra_flags()
    own = [n for n in flags.FLAGS if n not in before]
    for name in own:  # --stop-after as well as --stop_after: the argparse commands spell words with '-'
        if "_" in name:
            flags.DEFINE_alias(name.replace("_", "-"), name)
    if asked_help:
        module = getattr(main, "__module__", "") or ""
        entry = sys.modules.get(module)
        name = module if module != "__main__" else getattr(getattr(entry, "__spec__", None), "name", module)
        required = ["workdir"] if config_from_workdir else ["config", "workdir"]
        required += [n for n in own if _is_required(n)]
        print(help_text(prog_name(name, argv[0]), getattr(entry, "__doc__", "") or "", ["config", "workdir", *own],
                        required, configs is not None))
        return
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
