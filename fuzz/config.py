"""Coverage-guided fuzzing of the configuration loader and compiler: any YAML gives
resources and a snapshot, or a ConfigError naming what is wrong; never another exception.

    python -m fuzz.config [libFuzzer flags]
"""

from __future__ import annotations

import sys

import atheris
import yaml

with atheris.instrument_imports():
    from sidecar.config.compile import compile_snapshot
    from sidecar.config.parse import Document, load_documents
    from sidecar.errors import ConfigError


def one_input(data: bytes) -> None:
    try:
        docs = [d for d in yaml.safe_load_all(data.decode("utf-8", "replace")) if d is not None]
    except yaml.YAMLError:
        return
    try:
        resources = load_documents([Document(d, f"doc{i}") for i, d in enumerate(docs)])
        compile_snapshot(resources, version=1)
    except ConfigError:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
