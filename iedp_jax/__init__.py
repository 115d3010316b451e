"""IEDP in JAX: diffusion-model backbones for dense perception (segmentation, depth).

``iedp_jax.load_trained(workdir)`` gives a trained model with ``predict(images)``
(:mod:`iedp_jax.trained`). It is resolved on first use, so importing a lower layer
(``iedp_jax.sd``, ``iedp_jax.infra``) never loads the IEDP method.
"""

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["TrainedModel", "load_trained"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("iedp_jax.trained"), name)
    raise AttributeError(f"module 'iedp_jax' has no attribute {name!r}")
