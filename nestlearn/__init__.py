"""nestlearn: Nested Learning in JAX/Flax (arXiv 2512.24695)."""

__version__ = "0.1.0"
