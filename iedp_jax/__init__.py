"""IEDP in JAX: diffusion-model backbones for dense perception (segmentation, depth)."""

__version__ = "0.1.0"

from iedp_jax.trained import TrainedModel, load_trained

__all__ = ["TrainedModel", "load_trained"]
