"""Which build of the data path runs: the compiled modules, or their sources.

A compiled module (setup.py, mypyc) is an extension beside its source, and Python's importer
prefers an extension. The compiled modules are used only while every source still hashes to
what was compiled (the manifest setup.py writes) and `WEFT_PURE` is not 1; otherwise a source
edited after the build would be shadowed by stale machine code. The choice is all or
nothing: compiled modules call each other directly, so a mix would run two versions of one
module.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PACKAGE = Path(__file__).resolve().parent
MANIFEST = PACKAGE / "compiled.json"


def choose() -> str:
    """'compiled', or 'pure' (sources imported) with the reason when compiled modules exist
    but are not used."""
    if os.environ.get("WEFT_PURE") == "1":
        _use_sources()
        return "pure (WEFT_PURE=1)"
    try:
        manifest: dict[str, str] = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        _use_sources()  # no build, or a broken one: any extension left behind is stale
        return "pure"
    root = PACKAGE.parent
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    stale = [
        p for p, digest in manifest.items()
        if _digest(root / p) != digest or not (root / p).with_suffix(suffix).exists()
    ]  # fmt: skip
    if stale:
        _use_sources()
        warnings.warn(
            f"weft: {len(stale)} compiled module(s) missing or older than their sources "
            f"({', '.join(stale[:3])}{', …' if len(stale) > 3 else ''}): running the "
            "sources; rebuild with `make compile` (or `pip install .`)",
            RuntimeWarning,
            stacklevel=2,
        )
        return "pure (compiled modules out of date)"
    return "compiled"


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


class _Sources(importlib.abc.MetaPathFinder):
    """Finds the package's modules as source or bytecode files only, never extensions."""

    LOADERS = (
        (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES),
        (importlib.machinery.SourcelessFileLoader, importlib.machinery.BYTECODE_SUFFIXES),
    )

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("sidecar.") or not path:
            return None
        for entry in path:
            spec = importlib.machinery.FileFinder(entry, *self.LOADERS).find_spec(fullname)
            if spec is not None:
                return spec
        return None


def _use_sources() -> None:
    """Ahead of the path finder, which would find the extensions; behind finders placed
    in front of it (atheris' instrumentation wraps the imports that follow it)."""
    if not any(isinstance(f, _Sources) for f in sys.meta_path):
        finder = importlib.machinery.PathFinder
        at = sys.meta_path.index(finder) if finder in sys.meta_path else 0
        sys.meta_path.insert(at, _Sources())
