"""Networks built from a space: mixed ops, the super net and fixed nets, heads, size
profiling, ONNX export, weight remapping."""
