"""Benchmarks behind ``sparsespike bench``: ratios measured side by side in one run."""
