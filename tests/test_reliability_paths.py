"""Cloud paths: a ``gs://`` workdir or output reaches orbax and ``etils.epath`` as the URL it is
(``pathlib`` would turn ``gs://b/run`` into the local folder ``gs:/b/run``); local paths keep
working. Nothing here touches the network: orbax and the file calls are captured."""

from __future__ import annotations

import json
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

from iedp_jax.infra import checkpoint, lock, logs, visualize
from iedp_jax.infra.paths import as_path, is_url

URL = "gs://my-bucket/runs/ade"


def test_as_path_keeps_urls_and_makes_local_paths_absolute(tmp_path, monkeypatch):
    assert str(as_path(URL)) == URL and is_url(URL) and isinstance(as_path(URL), epath.Path)
    assert str(as_path(epath.Path(URL) / "checkpoints")) == URL + "/checkpoints"
    monkeypatch.chdir(tmp_path)
    assert str(as_path("runs/a")) == os.path.join(str(tmp_path), "runs", "a") and not is_url("runs/a")


def test_a_gs_workdir_reaches_orbax_unchanged(monkeypatch):
    seen = []

    class Manager:  # stands in for orbax's CheckpointManager: records where it was pointed
        def __init__(self, directory, options=None, item_names=None):
            seen.append((directory, options))

        def all_steps(self):
            return []

        def latest_step(self):
            return None

    monkeypatch.setattr(ocp, "CheckpointManager", Manager)
    ckpt = checkpoint.Checkpointer(URL + "/checkpoints", every=2)
    assert ckpt.latest_step() is None
    best = checkpoint.BestCheckpointer(URL + "/best", "mIoU", "max")
    (a, opts), (b, _) = seen
    assert isinstance(a, epath.Path) and str(a) == URL + "/checkpoints" and str(b) == URL + "/best"
    assert opts.async_options.post_finalization_callback is not None  # the manifest writer
    assert str(ckpt.directory / "4" / checkpoint.MANIFEST) == URL + "/checkpoints/4/" + checkpoint.MANIFEST
    del best


def test_results_pngs_and_the_lock_go_through_epath(monkeypatch, tmp_path):
    """Every write of a results file, a PNG and the workdir lock is an epath call on the URL."""
    store: dict[str, bytes] = {}

    class Writer:
        def __init__(self, name):
            self.name = name

        def write(self, data):
            store[self.name] = store.get(self.name, b"") + (data.encode() if isinstance(data, str) else bytes(data))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    gpath = type(as_path(URL))  # the class epath uses for gs:// (and, here, for every path)
    monkeypatch.setattr(gpath, "mkdir", lambda self, *a, **k: None)
    monkeypatch.setattr(gpath, "write_text", lambda self, text, *a, **k: store.__setitem__(str(self), text.encode()))
    monkeypatch.setattr(gpath, "exists", lambda self: str(self) in store)
    monkeypatch.setattr(gpath, "open", lambda self, mode="r", *a, **k: Writer(str(self)))
    logs.write_results({"mIoU": 0.5}, [URL + "/eval/results.json"], ("mIoU",), "test")
    visualize.save_png(URL + "/eval/images/0.png", np.zeros((2, 3, 3), np.uint8))
    path = lock.acquire(URL)
    assert json.loads(store[URL + "/eval/results.json"]) == {"mIoU": 0.5}
    assert store[URL + "/eval/images/0.png"].startswith(b"\x89PNG")
    assert str(path) == URL + "/run.lock" and json.loads(store[URL + "/run.lock"])["pid"] == os.getpid()
    with pytest.raises(lock.WorkdirLocked):  # the object store has no O_EXCL, but a held lock still stops
        monkeypatch.setattr(gpath, "read_text", lambda self, *a, **k: store[str(self)].decode())
        monkeypatch.setattr(lock, "_pid_alive", lambda pid: True)
        lock.acquire(URL)


def test_metric_log_on_a_gs_workdir_is_rewritten_whole(monkeypatch):
    """An object store cannot append: ``metrics.jsonl`` on ``gs://`` keeps every line (those of a
    resumed run's earlier life too), and TensorBoard is pointed at the URL itself."""
    store = {URL + "/metrics.jsonl": '{"step": 1, "loss": 3.0}\n'}
    gpath = type(as_path(URL))
    monkeypatch.setattr(gpath, "exists", lambda self: str(self) in store)
    monkeypatch.setattr(gpath, "read_text", lambda self, *a, **k: store[str(self)])
    monkeypatch.setattr(gpath, "write_text", lambda self, text, *a, **k: store.__setitem__(str(self), text))
    boards = []

    class Board:  # tensorboardX writes gs:// itself (google-cloud-storage); recorded, not run
        def __init__(self, logdir, purge_step=None):
            boards.append(logdir)

        def add_scalar(self, *a):
            pass

        def flush(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr(logs, "SummaryWriter", Board)
    writer = logs.MetricWriter(URL)
    writer.write(2, {"loss": 2.5})
    writer.write(3, {"loss": 2.0})
    writer.close()
    assert boards == [URL + "/tensorboard"]
    lines = [json.loads(x) for x in store[URL + "/metrics.jsonl"].splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3] and lines[-1]["loss"] == 2.0


def test_training_into_a_gs_workdir_refuses_only_the_tiny_backbone():
    from iedp_jax import trainer
    from iedp_jax.infra.errors import ConfigError
    from tests.helpers import load_config

    with pytest.raises(ConfigError, match="tiny backbone"):
        trainer.train(load_config("smoke_seg"), URL)


def test_an_unreachable_workdir_is_one_sentence(monkeypatch):
    from iedp_jax.infra.errors import ConfigError

    def unreachable(self, *a, **k):
        raise OSError("Error executing an HTTP request: could not resolve host\n when reading metadata")

    monkeypatch.setattr(type(as_path(URL)), "mkdir", unreachable)
    with pytest.raises(ConfigError, match=r"cannot create the workdir gs://my-bucket/runs/ade \(Error executing an "
                                          r"HTTP request: could not resolve host\): check the path"):
        lock.acquire(URL)
