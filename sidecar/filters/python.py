"""Filters written in Python by users: a class loaded from a file or a module that a
`weft.dev PythonFilter` names, run on the requests of the routes whose rules point at it
with an ExtensionRef.

The interface (docs/python-filters.md has it whole):

    class MyFilter:
        config_schema = {...}            # optional: JSON Schema of its `config` block

        def __init__(self, config: dict) -> None: ...

        def on_request(self, request: Request) -> Reply | None: ...   # or `async def`

`Request` shows the request (method, path, query, host, headers, client) and takes edits:
`set_header` / `remove_header` change what is forwarded, `set_response_header` what the
client gets back. Returning a `Reply` answers the request there. A filter that raises
answers 500 for that request only (counted in `weft_filter_errors_total`); it never takes
the process down. The configuration is checked against `config_schema` when it loads, and
the filter's file is watched like the configuration files: an edit reloads it.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import re
import sys
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.config.headerops import HeaderOps
from sidecar.config.resources import PythonFilter
from sidecar.errors import ConfigError
from sidecar.filters.chain import Exchange, LocalReply, Verdict

log = logging.getLogger("weft.filters")


@dataclass(frozen=True, slots=True)
class Reply:
    """What a filter answers instead of forwarding the request."""

    status: int
    body: bytes | str = b""
    headers: tuple[tuple[str, str], ...] = ()


class Request:
    """A request, as a Python filter sees and edits it."""

    __slots__ = ("_x",)

    def __init__(self, x: Exchange) -> None:
        self._x = x

    @property
    def method(self) -> str:
        return self._x.method

    @property
    def path(self) -> str:
        return self._x.path

    @property
    def query(self) -> str:
        return self._x.query

    @property
    def host(self) -> str:
        return self._x.authority

    @property
    def client(self) -> str:
        """The client's address (X-Forwarded-For only behind --trusted-hops)."""
        return self._x.client

    def header(self, name: str) -> str | None:
        """The first value of a field (any case), or None."""
        value = self._x.header(name.lower().encode("latin-1"))
        return value.decode("latin-1") if value is not None else None

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self._x.headers]

    def set_header(self, name: str, value: str) -> None:
        """Forward the request with this field (replacing the client's)."""
        self._x.request_ops.append(HeaderOps.build(set_=(_field(name, value),)))

    def remove_header(self, name: str) -> None:
        self._x.request_ops.append(HeaderOps.build(remove=(_field(name, "")[0],)))

    def set_response_header(self, name: str, value: str) -> None:
        """Answer the client with this field (whoever answers)."""
        self._x.response_ops.append(HeaderOps.build(set_=(_field(name, value),)))


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_VALUE = re.compile(r"^[\t\x20-\x7e\x80-\xff]*$")


def _field(name: str, value: str) -> tuple[str, str]:
    """A field a filter sets, as HTTP allows it (ValueError otherwise: the request is
    answered 500, and nothing malformed reaches a backend or a client)."""
    if not isinstance(name, str) or not _TOKEN.match(name):
        raise ValueError(f"{name!r} is not a field name")
    if not isinstance(value, str) or not _VALUE.match(value):
        raise ValueError(f"the value of {name} has a control character")
    return name.lower(), value.strip()


class PythonFilterRunner:
    """The chain's side of a user filter: its answers as the chain's, its failures as
    500s that are counted and logged."""

    __slots__ = ("errors", "impl", "name", "source")

    def __init__(self, name: str, impl: Any, source: str) -> None:
        self.name = name
        self.impl = impl
        self.source = source
        self.errors = 0  # failures so far (weft_filter_errors_total)

    def on_request(self, x: Exchange) -> Verdict | Awaitable[Verdict]:
        try:
            result = self.impl.on_request(Request(x))
        except Exception as exc:
            return self._failed(x, exc)
        if hasattr(result, "__await__"):
            return self._awaited(x, result)
        return self._verdict(x, result)

    async def _awaited(self, x: Exchange, pending: Any) -> Verdict:
        try:
            result = await pending
        except Exception as exc:
            return self._failed(x, exc)
        return self._verdict(x, result)

    def _verdict(self, x: Exchange, result: Any) -> Verdict:
        if result is None:
            return None
        try:
            if not isinstance(result, Reply) or not 100 <= result.status <= 599:
                raise TypeError(f"on_request returned {result!r}, not a Reply or None")
            body = result.body.encode() if isinstance(result.body, str) else bytes(result.body)
            headers = tuple((n.encode("latin-1"), v.encode("latin-1"))
                        for n, v in (_field(*h) for h in result.headers))  # fmt: skip
        except (TypeError, ValueError, AttributeError) as exc:
            return self._failed(x, exc)
        return LocalReply(result.status, body, headers, "python_filter")

    def _failed(self, x: Exchange, exc: Exception) -> LocalReply:
        self.errors += 1
        if x.ctx is not None:
            x.ctx.metrics.inc("weft_filter_errors_total", (("filter", self.name),))
        log.error("Python filter %s failed: %s: %s", self.name, type(exc).__name__, exc)
        return LocalReply(500, b"a filter of this route failed\n", (), "filter_error")

    def describe(self) -> str:
        return f"Python filter {self.name} ({self.source})"


def load(spec: PythonFilter) -> PythonFilterRunner:
    """Import the class and make the filter with its configuration; ConfigError naming what
    went wrong (a missing file, a syntax error, a configuration the schema refuses)."""
    name = f"{spec.meta.namespace}/{spec.meta.name}"
    where = spec.file or spec.module
    try:
        if spec.file:
            module_name = f"weft_user_filter_{spec.meta.namespace}_{spec.meta.name}"
            found = importlib.util.spec_from_file_location(module_name, spec.file)
            if found is None or found.loader is None:
                raise ConfigError(f"PythonFilter {name}: cannot load {spec.file}")
            module = importlib.util.module_from_spec(found)
            sys.modules[module_name] = module  # dataclasses and pickling look it up
            found.loader.exec_module(module)
        else:
            module = importlib.import_module(spec.module)
        cls = getattr(module, spec.class_name, None)
        if cls is None:
            raise ConfigError(f"PythonFilter {name}: {where} has no class {spec.class_name}")
        config = json.loads(spec.config_json)
        schema = getattr(cls, "config_schema", None)
        if schema is not None:
            import jsonschema

            try:
                jsonschema.validate(config, schema)
            except jsonschema.ValidationError as invalid:
                at = "/".join(str(p) for p in invalid.absolute_path) or "config"
                raise ConfigError(f"PythonFilter {name}: config {at}: {invalid.message}") from None
        impl = cls(config)
        if not callable(getattr(impl, "on_request", None)):
            raise ConfigError(f"PythonFilter {name}: {spec.class_name} has no on_request")
    except ConfigError:
        raise
    except Exception as exc:  # the user's code: any error it raises while loading
        raise ConfigError(f"PythonFilter {name}: loading {where}: "
                          f"{type(exc).__name__}: {exc}") from None  # fmt: skip
    return PythonFilterRunner(name, impl, f"{where}:{spec.class_name}")


def source_files(specs: list[PythonFilter]) -> list[str]:
    """The filters' files, watched like the configuration's."""
    return [s.file for s in specs if s.file and Path(s.file).exists()]
