"""The one dispatcher from ``data.name`` to a :class:`~iedp_jax.data.sources.DataSource`."""

from __future__ import annotations

from ml_collections import ConfigDict

from iedp_jax.data import ade20k, cityscapes, folder, kitti, nyu, synthetic
from iedp_jax.data.sources import DataSource
from iedp_jax.infra.errors import ConfigError

_OPENERS = {"ade20k": ade20k.ADE20KSource.from_config, "nyu": nyu.NYUv2Source.from_config,
            "synthetic_seg": synthetic.open_source, "synthetic_depth": synthetic.open_source,
            "folder": folder.FolderSegSource.from_config, "folder_depth": folder.FolderDepthSource.from_config,
            "cityscapes": cityscapes.CityscapesSource.from_config, "kitti": kitti.KittiSource.from_config}
_DEPTH = ("nyu", "synthetic_depth", "folder_depth", "kitti")
_ON_DISK = {"ade20k": "ADE20K (the ADEChallengeData2016 folder)",
            "nyu": "NYUv2 in the BTS layout (sync/, official_splits/test/ and the split files)",
            "folder": "your folder (classes.json, images/{train,val}/, labels/{train,val}/)",
            "folder_depth": "your folder (depth.json, images/{train,val}/, depth/{train,val}/)",
            "cityscapes": "Cityscapes (leftImg8bit/ and gtFine/)",
            "kitti": "KITTI in the BTS layout (the raw <date>/ folders, data_depth_annotated/ and the split files)"}
FORMATS = ("tfds", "folders")


def task_of(name: str) -> str:
    """The task ('seg' or 'depth') of dataset ``name``, known before anything is read."""
    if name not in _OPENERS:
        raise ConfigError(f"data.name={name!r} is not known: use one of {', '.join(_OPENERS)}.")
    return "depth" if name in _DEPTH else "seg"


def make_dataset(cfg_data: ConfigDict, seed: int) -> DataSource:
    """The source named by ``cfg_data.name`` over ``cfg_data.data_dir`` in ``cfg_data.format``."""
    task_of(cfg_data.name)
    if cfg_data.name in _ON_DISK:
        if cfg_data.format not in FORMATS:
            raise ConfigError(f"data.format={cfg_data.format!r} is not known: use 'tfds' or 'folders'.")
        if not cfg_data.data_dir and cfg_data.format == "folders":
            raise ConfigError(f"data.name={cfg_data.name!r} reads {_ON_DISK[cfg_data.name]} from disk: download "
                              "it and pass --config.data.data_dir=/path/to/it.")
    return _OPENERS[cfg_data.name](cfg_data, seed)
