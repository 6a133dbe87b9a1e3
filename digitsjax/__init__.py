"""digitsjax: functional JAX training for handwritten digits, reproducible to the bit."""

__version__ = "0.1.0"
