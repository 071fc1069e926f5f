"""Weft data plane: the sidecar and edge gateway share this package."""

__version__ = "0.1.0"
