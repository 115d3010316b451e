"""tfds builders over the folders users already have (no download), prepared once as array_record.

``prepare(builder_cls, manual_dir, data_dir)`` builds a dataset from its usual on-disk layout into
``data_dir/<name>/<version>/`` (array_record shards). Preparing needs ``tensorflow-cpu`` (tfds
serialises examples with it); reading does not: :func:`data_source` opens a split through
``tfds.data_source``, a random-access source that grain reads from. Several processes may call
:func:`prepare_once` together: process 0 builds, the others wait at a barrier and then read.

Examples keep the original file bytes (JPEG / PNG) and are decoded at read time by the same
functions as the folder readers (:mod:`iedp_jax.data.folders`), so the two paths give identical
arrays. Builders for other datasets subclass :class:`FolderBuilder` and implement
``_examples(manual_dir, split)``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:  # tfds is an optional dependency: the 'folders' format works without it
    import tensorflow_datasets as tfds
except ImportError:  # pragma: no cover - exercised only without the [data] extra
    tfds = None

from iedp_jax.data.folders import ADE20KSource, NYUv2Source
from iedp_jax.data.pipeline import config_threads

_INSTALL = ('the tfds data format needs tensorflow-datasets and array-record (and tensorflow-cpu to '
            'prepare): pip install -e ".[data]", or set --config.data.format=folders.')


def _require_tfds() -> None:
    if tfds is None:
        raise ImportError(_INSTALL)


_Base = tfds.core.GeneratorBasedBuilder if tfds is not None else object


class FolderBuilder(_Base):  # type: ignore[misc, valid-type]
    """A tfds builder whose manual directory is a dataset folder in its usual layout.

    Subclasses set ``VERSION``, ``SPLITS`` (tfds split name -> layout split name),
    ``MANUAL_DOWNLOAD_INSTRUCTIONS``, ``_features()`` (a dict name -> tfds feature),
    ``INDEXED`` (text fields also kept, per split and in record order, in the dataset's metadata)
    and ``_examples(manual_dir, split) -> [(key, example)]`` (``Path`` values are stored as the
    file's bytes).
    """

    INDEXED: tuple[str, ...] = ("file_name",)

    SPLITS: Mapping[str, str] = {}
    def _info(self):
        # disable_shuffling: records keep the layout's sorted order, so record i is the folder
        # reader's example i.
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(self._features()),
                                              description=self.__doc__, metadata=tfds.core.MetadataDict(),
                                              disable_shuffling=True)

    def _features(self) -> dict[str, Any]:
        raise NotImplementedError

    def _examples(self, manual_dir: Path, split: str) -> Sequence[tuple[str, dict[str, Any]]]:
        raise NotImplementedError

    def check_layout(self, manual_dir: Path) -> None:
        """Raises the folder reader's one-sentence error when ``manual_dir`` is not the layout."""
        for split in self.SPLITS.values():
            self._examples(manual_dir, split)

    def _split_generators(self, dl_manager):
        manual = Path(dl_manager.manual_dir)
        examples = {name: list(self._examples(manual, split)) for name, split in self.SPLITS.items()}
        # The per-record text fields, in record order, so readers need not scan the records.
        self.info.metadata["index"] = {
            name: {k: [str(ex[k]) for _, ex in exs] for k in self.INDEXED} for name, exs in examples.items()}
        return {name: self._generate_examples(exs) for name, exs in examples.items()}

    def _generate_examples(self, examples: Sequence[tuple[str, dict[str, Any]]]) -> Iterator[tuple[str, dict]]:
        for key, example in examples:
            yield key, {k: (Path(v).read_bytes() if isinstance(v, Path) else v) for k, v in example.items()}


def _bytes() -> Any:
    return tfds.features.Tensor(shape=(), dtype=np.object_)


class IedpAde20k(FolderBuilder):
    """ADE20K SceneParsing (150 classes) from ADEChallengeData2016/; JPEG and annotation PNG bytes."""

    VERSION = tfds.core.Version("1.0.0") if tfds else None
    SPLITS = {"train": "training", "validation": "validation"}
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Point the manual directory at the folder holding "
                                    "ADEChallengeData2016/ (or at ADEChallengeData2016 itself).")

    def _features(self) -> dict[str, Any]:
        return {"image": _bytes(), "annotation": _bytes(), "file_name": tfds.features.Text()}

    def _examples(self, manual_dir: Path, split: str):
        src = ADE20KSource(manual_dir)
        files = src.train_files if split == "training" else src.val_files
        return [(img.stem, {"image": img, "annotation": ann, "file_name": img.name}) for img, ann in files]


class IedpNyuDepthV2(FolderBuilder):
    """NYU Depth v2 in the BTS "sync" layout with its split files; JPEG and uint16 depth PNG bytes."""

    VERSION = tfds.core.Version("1.0.0") if tfds else None
    SPLITS = {"train": "train", "test": "test"}
    INDEXED = ("file_name", "scene")
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Point the manual directory at the BTS NYUv2 folder (sync/, "
                                    "official_splits/test/ and the nyudepthv2_*_files_with_gt.txt split files).")

    def _features(self) -> dict[str, Any]:
        return {"image": _bytes(), "depth": _bytes(), "scene": tfds.features.Text(),
                "file_name": tfds.features.Text()}

    def _examples(self, manual_dir: Path, split: str):
        src = NYUv2Source(manual_dir)
        files = src.train_files if split == "train" else src.val_files
        root = src.train_root if split == "train" else src.test_root
        return [(str(rgb.relative_to(root)), {"image": rgb, "depth": dep, "scene": scene,
                                              "file_name": str(rgb.relative_to(root))})
                for rgb, dep, scene in files]


def default_data_dir() -> str:
    """tfds's data directory: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def prepare(builder_cls: type, manual_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None):
    """Builds ``builder_cls`` from ``manual_dir`` into ``data_dir`` unless already there; returns
    the builder."""
    _require_tfds()
    builder = builder_cls(data_dir=str(data_dir or default_data_dir()), file_format="array_record")
    if not builder.is_prepared():
        if not manual_dir or not str(manual_dir).strip():
            raise FileNotFoundError(f"{builder.name} is not prepared in {builder.data_dir} and no dataset folder "
                                    "is given: set --config.data.data_dir to the folder in its usual layout.")
        builder.check_layout(Path(manual_dir))  # the folder reader's one-sentence layout error
        try:
            import tensorflow  # noqa: F401, PLC0415 - tfds serialises examples with it
        except ImportError as e:
            raise ImportError(f"preparing {builder.name} into {builder.data_dir} needs tensorflow-cpu: "
                              'pip install -e ".[data]" (reading prepared files does not).') from e
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=str(Path(manual_dir).absolute())))
    return builder


def prepare_once(builder_cls: type, manual_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None):
    """:func:`prepare` on process 0 while the other processes wait; then every process opens it."""
    import jax  # noqa: PLC0415

    from iedp_jax.infra.distributed import barrier  # noqa: PLC0415

    if jax.process_count() == 1:
        return prepare(builder_cls, manual_dir, data_dir)
    if jax.process_index() == 0:
        prepare(builder_cls, manual_dir, data_dir)
    barrier(f"prepared {builder_cls.__name__}")
    builder = builder_cls(data_dir=str(data_dir or default_data_dir()), file_format="array_record")
    if not builder.is_prepared():
        raise FileNotFoundError(f"process 0 prepared {builder.name} but this process does not see it under "
                                f"{builder.data_dir}: put data.tfds_dir on a filesystem all hosts share.")
    return builder


def data_source(builder, split: str):
    """A random-access source of split ``split`` (records are dicts of bytes / str)."""
    if split not in builder.info.splits:
        raise ValueError(f"{builder.name} has no split {split!r} (it has {sorted(builder.info.splits)}).")
    return builder.as_data_source(split=split)


def as_file(data: bytes | np.ndarray) -> io.BytesIO:
    """Stored file bytes as a file object for the folder decoders."""
    return io.BytesIO(bytes(data.item() if isinstance(data, np.ndarray) else data))


def _index(builder, split: str, field: str) -> list[str]:
    try:
        return list(builder.info.metadata["index"][split][field])
    except (KeyError, TypeError) as e:
        raise ValueError(f"{builder.data_dir} was not prepared by this version of iedp_jax (no record "
                         "index in its metadata): delete it and rerun to prepare it again.") from e


def _entries(builder, split: str, fields: tuple[str, ...], extra: tuple[str, ...] = ()) -> list[tuple]:
    """Entries ``(name of field 1, name of field 2, *extra metadata, record index, source)``."""
    source = data_source(builder, split)
    names = _index(builder, split, "file_name")
    if len(names) != len(source):
        raise ValueError(f"{builder.data_dir}: the {split} split holds {len(source)} records but its index "
                         f"{len(names)}: delete the folder and prepare it again.")
    more = [_index(builder, split, k) for k in extra]
    return [(f"{builder.name}/{split}/{n}:{fields[0]}", f"{builder.name}/{split}/{n}:{fields[1]}",
             *(m[i] for m in more), i, source) for i, n in enumerate(names)]


class _RecordFiles:
    """Mixin for the folder sources: an entry's two files come from a record, not the disk."""

    FIELDS: tuple[str, str]

    def _files(self, entry: tuple) -> tuple[io.BytesIO, io.BytesIO]:
        record = entry[-1][entry[-2]]
        return as_file(record[self.FIELDS[0]]), as_file(record[self.FIELDS[1]])


class PreparedADE20KSource(_RecordFiles, ADE20KSource):
    """:class:`~iedp_jax.data.folders.ADE20KSource` reading the prepared :class:`IedpAde20k`."""

    FIELDS = ("image", "annotation")

    def __init__(self, builder, crop_size: Sequence[int] = (512, 512), seed: int = 0, **kwargs: Any) -> None:
        files = (_entries(builder, "train", self.FIELDS), _entries(builder, "validation", self.FIELDS))
        super().__init__(builder.data_dir, crop_size, seed, files=files, **kwargs)


class PreparedNYUv2Source(_RecordFiles, NYUv2Source):
    """:class:`~iedp_jax.data.folders.NYUv2Source` reading the prepared :class:`IedpNyuDepthV2`."""

    FIELDS = ("image", "depth")

    def __init__(self, builder, crop_size: Sequence[int] = (480, 480), seed: int = 0, **kwargs: Any) -> None:
        files = (_entries(builder, "train", self.FIELDS, ("scene",)),
                 _entries(builder, "test", self.FIELDS, ("scene",)))
        super().__init__(builder.data_dir, crop_size, seed, files=files, **kwargs)


def make_prepared_dataset(cfg_data, seed: int):
    """The source for ``data.name`` in {'ade20k', 'nyu'} with ``data.format='tfds'``: prepares
    ``data.data_dir`` into ``data.tfds_dir`` on first use, then reads the array_record files."""
    _require_tfds()
    builder_cls, source_cls = {"ade20k": (IedpAde20k, PreparedADE20KSource),
                               "nyu": (IedpNyuDepthV2, PreparedNYUv2Source)}[cfg_data.name]
    builder = prepare_once(builder_cls, cfg_data.data_dir, cfg_data.tfds_dir or None)
    return source_cls(builder, tuple(cfg_data.crop_size), seed,
                      num_workers=config_threads(cfg_data.get("num_workers", -1)))
