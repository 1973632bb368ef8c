"""SEVLM in JAX/Flax: a small emotional vision-language model for visual art."""

__version__ = "0.1.0"
