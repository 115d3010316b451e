"""IEDP evaluation: the published protocols (:mod:`~iedp_jax.eval.windows`), their host-side
batch plan (:mod:`~iedp_jax.eval.plan`) and the runner that both the trainer and
``python -m iedp_jax.evaluate`` call (:mod:`~iedp_jax.eval.runner`)."""
