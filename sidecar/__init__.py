"""Weft data plane: the sidecar and edge gateway share this package."""

from sidecar.build import choose

__version__ = "0.1.0"
BUILD = choose()  # "compiled", or "pure …" (sidecar/build.py)
