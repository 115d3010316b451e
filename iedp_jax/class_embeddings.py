"""Compute VPD's class embeddings ahead of training (otherwise the first run computes them).

  python -m iedp_jax.class_embeddings --config vpd_ade --workdir /ckpt/vpd_ade \
      --config.model.pretrained=/models/stable-diffusion-v1-5

Per class (the 150 ADE20K classes, or VPD's 27 NYUv2 scene classes for depth), the mean over
CLIP's 80 ImageNet templates of the pipeline's text tower's pooled output, as VPD's
``dump_nyu_text_embeddings.py``; written to ``WORKDIR/class_embeddings/<key>.npy``, where
``python -m iedp_jax.train`` with the same config and workdir finds them. An entry point only:
nothing imports it.
"""

from __future__ import annotations

from ml_collections import ConfigDict

from iedp_jax.build import cached_class_embeddings, embedding_class_names, embeddings_path, resolve_backbone
from iedp_jax.configs import FOLDER as CONFIGS
from iedp_jax.infra.cli import run
from iedp_jax.infra.logs import log_line
from iedp_jax.infra.paths import as_path
from iedp_jax.prompts import IMAGENET_TEMPLATES
from iedp_jax.sd import load_clip_text, load_tokenizer
from iedp_jax.sd.weights import WeightsError


def main(config: ConfigDict, workdir: str, flag_values: dict) -> None:
    del flag_values
    workdir = as_path(workdir)  # local or gs://
    workdir.mkdir(parents=True, exist_ok=True)
    sd, _ = resolve_backbone(config, workdir)
    names = embedding_class_names(config)
    text, params = load_clip_text(sd)
    table = cached_class_embeddings(workdir, sd, names, text, params, load_tokenizer(sd))
    log_line(f"class embeddings {table.shape[0]} x {table.shape[1]} in "
             f"{embeddings_path(workdir, sd, names, IMAGENET_TEMPLATES)}")


def entry() -> None:
    """The console script (the same as ``python -m iedp_jax.class_embeddings``)."""
    run(main, user_errors=(WeightsError,), configs=CONFIGS)


if __name__ == "__main__":
    entry()
