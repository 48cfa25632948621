"""sparsespike: sparse, energy-efficient spiking neural networks on PyTorch."""

__version__ = "0.1.0"
