"""IEDP's data: the data-source protocol (:mod:`~iedp_jax.data.sources`), one module per dataset
holding its reader and its tfds builder (:mod:`~iedp_jax.data.ade20k`,
:mod:`~iedp_jax.data.nyu`, :mod:`~iedp_jax.data.synthetic`), the one dispatcher from
``data.name`` (:mod:`~iedp_jax.data.catalog`), the mmseg / VPD transforms
(:mod:`~iedp_jax.data.transforms`), the training order (:mod:`~iedp_jax.data.order`) and the grain
input pipeline (:mod:`~iedp_jax.data.pipeline`)."""
