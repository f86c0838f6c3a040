"""Shipped search spaces and fixed architectures (YAML); load them with ``dnas.space.graph``."""
