"""dnas: hardware-aware differentiable neural architecture search for dense prediction."""

__version__ = "0.1.0"
