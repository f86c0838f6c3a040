"""Swappable cost models (FLOPs, params; measured latency tables later), registered by name."""
