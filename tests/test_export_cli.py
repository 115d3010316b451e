"""``python -m iedp_jax.export``: the fine-tuned UNet as a diffusers folder (PyTorch forward =
our Flax UNet with the trained parameters), the IEDP weights round trip, no overwriting."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers import UNet2DConditionModel as TorchUNet
from safetensors.numpy import load_file

from iedp_jax import export as export_cli
from iedp_jax import load_trained
from iedp_jax.infra.errors import InputError
from iedp_jax.sd.names import flatten
from tests.helpers import ROOT, rel_err
from tests.test_predict import seg_workdir  # noqa: F401 - the session's trained workdir (a fixture)

pytestmark = pytest.mark.xdist_group("predict")

UNET_FILE = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def exported(seg_workdir, tmp_path_factory):  # noqa: F811 - the fixture imported above
    """``(folder, trained model)``: the export the command writes, done in process."""
    out = tmp_path_factory.mktemp("export") / "model"
    assert export_cli.export_workdir(seg_workdir, out) == out
    return out, load_trained(seg_workdir)


def test_unet_loads_in_diffusers_and_matches_the_flax_unet(exported, seg_workdir):  # noqa: F811
    out, trained = exported
    assert sorted(p.name for p in out.iterdir()) == ["iedp", "image_encoder", "model_index.json", "scheduler",
                                                     "text_encoder", "tokenizer", "unet", "vae"]
    assert json.loads((out / "unet" / "config.json").read_text()) == json.loads(
        (seg_workdir / "tiny_backbone" / "unet" / "config.json").read_text())
    exported_w, pretrained_w = load_file(out / "unet" / UNET_FILE), load_file(seg_workdir / "tiny_backbone" / "unet"
                                                                              / UNET_FILE)
    w = "conv_in.weight"
    np.testing.assert_allclose(exported_w[w], pretrained_w[w] * 1.02, rtol=1e-6)  # the trained UNet, not the input
    torch_unet = TorchUNet.from_pretrained(out / "unet").eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)  # [B, h, w, 4] latents
    ctx = rng.standard_normal((2, 7, trained.model.context_dim)).astype(np.float32)  # [B, L, D]
    t = np.array([1, 500])
    ours = trained.model.unet.apply({"params": trained.params["unet"]}, x, t, ctx)
    with torch.no_grad():
        ref = torch_unet(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(t), torch.from_numpy(ctx)).sample
    assert rel_err(ours, ref.permute(0, 2, 3, 1).numpy()) < 1e-4
    pipe = StableDiffusionPipeline.from_pretrained(out)  # the folder is a complete pipeline
    assert type(pipe.image_encoder).__name__ == "CLIPVisionModelWithProjection" and pipe.safety_checker is None


def test_iedp_weights_and_config_round_trip(exported):
    out, trained = exported
    params = jax.device_get(trained.params)
    heads = load_file(out / "iedp" / "heads.safetensors")
    want = {"/".join(k): v for k, v in flatten({k: v for k, v in params.items() if k != "unet"}).items()}
    assert set(heads) == set(want) and {k.split("/")[0] for k in heads} == {"implicit", "adapter", "head"}
    for k, v in want.items():
        np.testing.assert_array_equal(heads[k], v, err_msg=k)
    config = json.loads((out / "iedp" / "config.json").read_text())
    assert config["step"] == 7 and config["task"] == "seg" and config["class_names"] == list(trained.class_names)
    assert config["num_classes"] == 5 and config["attn_strides"] == [16, 32] and config["scene_names"] == []
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_export_never_overwrites(exported, seg_workdir, tmp_path):  # noqa: F811
    out, _ = exported
    with pytest.raises(InputError, match="is not empty: pass a new or empty folder") as e:
        export_cli.export_workdir(seg_workdir, out)
    assert str(e.value).count(". ") == 0
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        export_cli.export_workdir(seg_workdir, tmp_path / "file")


def test_command_line_writes_the_same_folder(exported, seg_workdir, tmp_path):  # noqa: F811
    out, _ = exported
    target = tmp_path / "empty"
    target.mkdir()  # an empty folder is fine
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-m", "iedp_jax.export", "--workdir", str(seg_workdir), "--out",
                          str(target), "--checkpoint", str(seg_workdir / "checkpoints" / "7")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.strip().splitlines()[-1] == f"[iedp] exported step 7 of {seg_workdir} to {target}"
    for rel in ("unet/" + UNET_FILE, "iedp/heads.safetensors"):
        a, b = load_file(out / rel), load_file(target / rel)
        assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a), rel
    res = subprocess.run([sys.executable, "-m", "iedp_jax.export", "--workdir", str(seg_workdir), "--out",
                          str(target)], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [f"[iedp] --out {target} is not empty: pass a new or empty folder "
                                               "(export never overwrites)."]
