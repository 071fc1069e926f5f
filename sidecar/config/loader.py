"""Read YAML files into a compiled Snapshot; every error names file, document and field."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sidecar.config.certs import CertificatePair, CertKey, check_pair
from sidecar.config.compile import compile_snapshot
from sidecar.config.ingress import IngressListeners, served
from sidecar.config.model import Limits
from sidecar.config.parse import Document, kind_key, load_documents
from sidecar.config.resources import PythonFilter, Resource, Secret, TLSCertificate
from sidecar.config.snapshot import Snapshot
from sidecar.errors import ConfigError
from sidecar.filters.chain import Filter

YAML_SUFFIXES = (".yaml", ".yml", ".json")


def expand(paths: Iterable[str]) -> list[Path]:
    """Files named directly, plus YAML files inside named directories (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.suffix in YAML_SUFFIXES))
        else:
            out.append(p)
    return out


def load_yaml(text: str, source: str) -> list[object]:
    """The documents of a YAML text; ConfigError naming `source` when it is not YAML.
    (PyYAML loads on the first file read: a sidecar fed by the control plane reads none.)"""
    from sidecar.config.yamlstrict import YAMLError, load_all

    try:
        return load_all(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML{where}: {problem}", source=source) from None


def read_documents(files: Sequence[Path]) -> list[Document]:
    docs: list[Document] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror}", source=str(path)) from None
        except UnicodeDecodeError:
            raise ConfigError("is not UTF-8 text", source=str(path)) from None
        loaded = load_yaml(text, str(path))
        for i, doc in enumerate(loaded, start=1):
            docs.append(Document(doc, f"{path} document {i}", path.parent))
    return docs


def load_snapshot(
    paths: Sequence[str], *, version: int, gateway_class: str, limits: Limits | None = None,
    refused: Mapping[str, str] | None = None, ingress: IngressListeners | None = None,
) -> Snapshot:  # fmt: skip
    """The files' snapshot; `refused`: kinds this process does not serve, and why (an
    edge given the mesh's AuthorizationPolicy says so rather than ignoring it); `ingress`:
    where the Ingresses of Weft's class are served (config/ingress.py)."""
    files = expand(paths)
    if not files:
        raise ConfigError("no configuration files found", source=", ".join(paths))
    resources = load_documents(read_documents(files))
    for res in resources:
        if refused and (why := refused.get(kind_key(res))):
            meta = res.meta
            raise ConfigError(f"{kind_key(res)} {meta.namespace}/{meta.name}: {why}")
    notes: list[str] = []
    if ingress is not None:
        extra, notes = served(resources, ingress, gateway_class)
        resources += extra
    certificates = load_certificates(resources)
    python = [res for res in resources if isinstance(res, PythonFilter)]
    extensions = load_python_filters(python)
    snap = compile_snapshot(
        resources,
        version=version,
        gateway_class=gateway_class,
        limits=limits,
        certificates=certificates,
        extensions=extensions,
    )
    now = time.time()
    expired = tuple(
        f"{c.name}: certificate expired {int(now - c.not_after) // 86400} day(s) ago"
        for c in certificates.values()
        if c.not_after < now
    )
    cert_files = (f for c in certificates.values() for f in c.files)
    filter_files = (s.file for s in python if s.file)
    return dataclasses.replace(
        snap,
        sources=tuple(dict.fromkeys([*map(str, files), *cert_files, *filter_files])),
        warnings=snap.warnings + tuple(notes) + expired,
    )


def load_python_filters(specs: list[PythonFilter]) -> dict[tuple[str, str], Filter]:
    """Each PythonFilter's class, imported and configured (ConfigError on the first that
    cannot be: the configuration is refused, the one in force stays)."""
    if not specs:
        return {}
    from sidecar.filters.python import load

    return {(s.meta.namespace, s.meta.name): load(s) for s in specs}


def load_certificates(resources: Iterable[Resource]) -> dict[CertKey, CertificatePair]:
    """Every TLS Secret and TLSCertificate, read and checked (ConfigError on the first bad one)."""
    out: dict[CertKey, CertificatePair] = {}
    for res in resources:
        ns, name = res.meta.namespace, res.meta.name
        if isinstance(res, Secret) and res.tls_cert is not None and res.tls_key is not None:
            label = f"Secret {ns}/{name}"
            out[("Secret", ns, name)] = check_pair(label, res.tls_cert, res.tls_key)
        elif isinstance(res, TLSCertificate):
            label = f"TLSCertificate {ns}/{name}"
            pems = [_read_pem(label, key, path) for key, path in
                    (("certFile", res.cert_file), ("keyFile", res.key_file))]  # fmt: skip
            files = (res.cert_file, res.key_file)
            out[("TLSCertificate", ns, name)] = check_pair(label, *pems, files=files)
    return out


def _read_pem(label: str, key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}", source=label, field=f"spec.{key}") from None


@dataclass(frozen=True, slots=True)
class FileStamp:
    """What tells us a file changed: identity, size and modification time."""

    entries: tuple[tuple[str, int, int, int], ...]

    @classmethod
    def of(cls, paths: Sequence[str], extra: Iterable[str] = ()) -> FileStamp:
        """Stamp of the YAML files under `paths` plus `extra` files (certificates)."""
        out = []
        for f in dict.fromkeys([*map(str, expand(paths)), *extra]):
            try:
                st = os.stat(f)
                out.append((str(f), st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append((str(f), -1, -1, -1))
        return cls(tuple(out))
