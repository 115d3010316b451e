"""The shipped IEDP configs: ``--config NAME`` of the IEDP commands takes ``NAME.py`` of this
folder (``iedp-train --list-configs`` lists them with their purpose); a path to any config file
works as well. Each file's ``get_config()`` starts from iedp_jax.config.base_config and
overrides it; its docstring gives the commands that use it."""

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
