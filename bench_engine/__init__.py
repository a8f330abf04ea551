"""Bench engine: prune timm models with post-training sparsity techniques and measure them."""

__version__ = "0.1.0"
