"""The method-agnostic runtime that IEDP and DiffSegmenter share.

Mesh and shardings (:mod:`~iedp_jax.infra.sharding`), multi-process start-up and barriers
(:mod:`~iedp_jax.infra.distributed`), the compiled-step cache (:mod:`~iedp_jax.infra.compile`),
checkpoints (:mod:`~iedp_jax.infra.checkpoint`), the workdir lock (:mod:`~iedp_jax.infra.lock`),
local-or-``gs://`` paths (:mod:`~iedp_jax.infra.paths`), metrics (:mod:`~iedp_jax.infra.metrics`),
progress and metric logs (:mod:`~iedp_jax.infra.logs`), image decoding
(:mod:`~iedp_jax.infra.images`), visualisation (:mod:`~iedp_jax.infra.visualize`), the tfds
folder-builder base (:mod:`~iedp_jax.infra.tfds`), memory plans (:mod:`~iedp_jax.infra.memory`),
CLI plumbing (:mod:`~iedp_jax.infra.cli`) and the user-error family
(:mod:`~iedp_jax.infra.errors`). Imports nothing of ours outside itself.
"""
