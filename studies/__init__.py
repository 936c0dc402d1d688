"""One-off studies with their commands and results (CPU-small); not the benchmark suite."""
