"""Pictures: op-probability heat maps, architecture diagrams, sweep plots, image panels."""
