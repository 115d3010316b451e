"""The shipped DiffSegmenter configs: ``--config NAME`` of diffseg-evaluate takes ``NAME.py`` of
this folder (``diffseg-evaluate --list-configs`` lists them with their purpose); a path to any
config file works as well. Each file's ``get_config()`` starts from
diffseg_jax.config.default_config; its docstring gives the commands that reproduce the paper."""

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
