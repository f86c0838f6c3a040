"""Swappable cost models, registered by name: FLOPs, params, and measured latency tables."""
