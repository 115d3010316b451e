"""tfds builders over the folders users already have (no download), prepared once as array_record.

``prepare(builder_cls, manual_dir, data_dir)`` builds a dataset from its usual on-disk layout into
``data_dir/<name>/<version>/`` (array_record shards). Preparing needs ``tensorflow-cpu`` (tfds
serialises examples with it); reading does not: :func:`data_source` opens a split through
``tfds.data_source``, a random-access source that grain reads from. Several processes may call
:func:`prepare_once` together: process 0 builds, the others wait at a barrier and then read.

Examples keep the original file bytes (JPEG / PNG) and are decoded at read time by the same
functions as the folder readers (:mod:`iedp_jax.infra.images`), so the two paths give identical
arrays. Each dataset's builder subclasses :class:`FolderBuilder` beside its folder reader and
implements ``_examples(manual_dir, split)``; :func:`record_entries` lists a prepared split for
the readers.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

try:  # tfds is an optional dependency: the 'folders' format works without it
    import tensorflow_datasets as tfds
except ImportError:  # pragma: no cover - exercised only without the [data] extra
    tfds = None

from iedp_jax.infra.distributed import barrier
from iedp_jax.infra.errors import DatasetError, MissingDependency

_INSTALL = ('the tfds data format needs tensorflow-datasets and array-record (and tensorflow-cpu to '
            'prepare): pip install -e ".[data]", or set --config.data.format=folders.')


def require_tfds() -> None:
    """Raises a one-sentence :class:`MissingDependency` when tfds is not installed."""
    if tfds is None:
        raise MissingDependency(_INSTALL)


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

    def source_key(self, manual_dir: Path, examples: Mapping[str, Sequence] | None = None) -> dict[str, str]:
        """What the prepared copy was built from: the folder and a fingerprint of its listing (each
        split's files by relative path and size), kept in the metadata so that a copy is never
        reused for another folder."""
        manual_dir = Path(manual_dir).absolute()
        if examples is None:
            examples = {name: list(self._examples(manual_dir, split)) for name, split in self.SPLITS.items()}
        digest = hashlib.sha256()
        for name in sorted(examples):
            for key, ex in examples[name]:
                files = sorted((k, str(v)) for k, v in ex.items() if isinstance(v, Path))
                row = [name, key] + [[k, os.path.relpath(Path(v).absolute(), manual_dir), Path(v).stat().st_size]
                                     for k, v in files]
                digest.update(json.dumps(row).encode())
        return {"path": str(manual_dir), "fingerprint": digest.hexdigest()[:16]}

    def _split_generators(self, dl_manager):
        manual = Path(dl_manager.manual_dir)
        examples = {name: list(self._examples(manual, split)) for name, split in self.SPLITS.items()}
        self.info.metadata["source"] = self.source_key(manual, examples)
        # The per-record text fields, in record order, so readers need not scan the records.
        self.info.metadata["index"] = {
            name: {k: [str(ex[k]) for _, ex in exs] for k in self.INDEXED} for name, exs in examples.items()}
        return {name: self._generate_examples(exs) for name, exs in examples.items()}

    def _generate_examples(self, examples: Sequence[tuple[str, dict[str, Any]]]) -> Iterator[tuple[str, dict]]:
        for key, example in examples:
            yield key, {k: (Path(v).read_bytes() if isinstance(v, Path) else v) for k, v in example.items()}


def bytes_feature() -> Any:
    """A tfds feature holding a file's raw bytes (decoded at read time, not by tfds)."""
    return tfds.features.Tensor(shape=(), dtype=np.object_)


def default_data_dir() -> str:
    """tfds's data directory: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def prepare(builder_cls: type, manual_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None):
    """Builds ``builder_cls`` from ``manual_dir`` into ``data_dir`` unless already there; returns
    the builder."""
    require_tfds()
    builder = builder_cls(data_dir=str(data_dir or default_data_dir()), file_format="array_record")
    if not builder.is_prepared():
        if not manual_dir or not str(manual_dir).strip():
            raise DatasetError(f"{builder.name} is not prepared in {builder.data_dir} and no dataset folder "
                                    "is given: set --config.data.data_dir to the folder in its usual layout.")
        builder.check_layout(Path(manual_dir))  # the folder reader's one-sentence layout error
        try:
            import tensorflow  # noqa: F401, PLC0415 - tfds serialises examples with it
        except ImportError as e:
            raise MissingDependency(f"preparing {builder.name} into {builder.data_dir} needs tensorflow-cpu: "
                              'pip install -e ".[data]" (reading prepared files does not).') from e
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=str(Path(manual_dir).absolute())))
    elif manual_dir and str(manual_dir).strip() and Path(manual_dir).is_dir():
        check_source(builder, Path(manual_dir))
    return builder


def check_source(builder, manual_dir: Path) -> None:
    """A :class:`DatasetError` when the prepared copy was built from another folder than
    ``manual_dir`` (another listing; a copy moved with its files is the same source)."""
    stored = builder.info.metadata.get("source") if builder.info.metadata is not None else None
    if not isinstance(stored, Mapping) or not hasattr(builder, "source_key"):
        return  # prepared by an earlier release: its source is not known
    current = builder.source_key(manual_dir)
    if stored.get("fingerprint") != current["fingerprint"]:
        raise DatasetError(f"the prepared copy {builder.data_dir} was built from {stored.get('path')}, not from "
                           f"data.data_dir={current['path']} (their files differ): set --config.data.tfds_dir to "
                           "another folder for this dataset, or delete the prepared copy to rebuild it.")


def prepare_once(builder_cls: type, manual_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None):
    """:func:`prepare` on process 0 while the other processes wait; then every process opens it."""
    if jax.process_count() == 1:
        return prepare(builder_cls, manual_dir, data_dir)
    if jax.process_index() == 0:
        prepare(builder_cls, manual_dir, data_dir)
    barrier(f"prepared {builder_cls.__name__}")
    builder = builder_cls(data_dir=str(data_dir or default_data_dir()), file_format="array_record")
    if not builder.is_prepared():
        raise DatasetError(f"process 0 prepared {builder.name} but this process does not see it under "
                                f"{builder.data_dir}: put data.tfds_dir on a filesystem all hosts share.")
    return builder


def data_source(builder, split: str):
    """A random-access source of split ``split`` (records are dicts of bytes / str)."""
    if split not in builder.info.splits:
        raise DatasetError(f"{builder.name} has no split {split!r} (it has {sorted(builder.info.splits)}).")
    return builder.as_data_source(split=split)


def as_file(data: bytes | np.ndarray) -> io.BytesIO:
    """Stored file bytes as a file object for the folder decoders."""
    return io.BytesIO(bytes(data.item() if isinstance(data, np.ndarray) else data))


def record_index(builder, split: str, field: str) -> list[str]:
    """The text field ``field`` of every record of ``split``, in record order (kept in the
    dataset's metadata by :class:`FolderBuilder`, so no record is read)."""
    try:
        return list(builder.info.metadata["index"][split][field])
    except (KeyError, TypeError) as e:
        raise DatasetError(f"{builder.data_dir} was not prepared by this version of iedp_jax (no record "
                           "index in its metadata): delete it and rerun to prepare it again.") from e


class RecordPairs:
    """:class:`~iedp_jax.infra.files.PairFiles` over a prepared split: pair ``i`` is record ``i``'s
    two byte fields ``fields``, named by its ``file_name``."""

    def __init__(self, builder, split: str, fields: tuple[str, str]) -> None:
        self.source = data_source(builder, split)
        self.names = record_index(builder, split, "file_name")
        if len(self.names) != len(self.source):
            raise DatasetError(f"{builder.data_dir}: the {split} split holds {len(self.source)} records but "
                               f"its index {len(self.names)}: delete the folder and prepare it again.")
        self.fields = fields
        self.where = f"the prepared {split} split in {builder.data_dir}"

    def __len__(self) -> int:
        return len(self.names)

    def name(self, i: int) -> str:
        return self.names[i]

    def open(self, i: int) -> tuple[io.BytesIO, io.BytesIO]:
        try:
            record = self.source[i]
            a, b = (as_file(record[f]) for f in self.fields)
        except (TypeError, ValueError, KeyError, OSError, RuntimeError) as e:  # a truncated or damaged shard
            why = " ".join(str(e).split()) or type(e).__name__
            raise DatasetError(f"record {i} ({self.names[i]}) of {self.where} cannot be read ({why}): its "
                               "array_record files are truncated or damaged; delete that folder and rerun to "
                               "prepare it again.") from e
        a.name, b.name = f"{self.names[i]}:{self.fields[0]}", f"{self.names[i]}:{self.fields[1]}"
        return a, b

    def head(self, n: int | None) -> RecordPairs:
        """The first ``n`` records (all for None)."""
        if n is None:
            return self
        out = object.__new__(RecordPairs)
        out.source, out.names, out.fields, out.where = self.source, self.names[:n], self.fields, self.where
        return out
