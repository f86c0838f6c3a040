"""Search spaces: the YAML schema and graph, the op grammar, and what op probabilities choose."""
