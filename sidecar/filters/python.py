"""Filters written in Python by users: a class loaded from a file or a module that a
`weft.dev PythonFilter` names, run on the requests of the routes whose rules point at it
with an ExtensionRef.

The interface (docs/python-filters.md has it whole):

    class MyFilter:
        config_schema = {...}            # optional: JSON Schema of its `config` block

        def __init__(self, config: dict) -> None: ...

        def on_request(self, request: Request) -> Reply | None: ...   # or `async def`
        def on_response(self, response: Response) -> None: ...        # optional; or async
        def on_response_body(self, chunk: bytes, end: bool) -> bytes: ...   # optional

`Request` shows the request (method, path, query, host, headers, client) and takes edits:
`set_header` / `remove_header` change what is forwarded, `set_response_header` what the
client gets back. Returning a `Reply` answers the request there. `Response` is the answer
as it comes back (status and fields, both editable); `on_response_body` sees the body chunk
by chunk and returns what the client gets instead. A filter that raises answers 500 for
that request only (counted in `weft_filter_errors_total`); once the body has begun, the
answer is cut instead. It never takes the process down. The configuration is checked
against `config_schema` when it loads, and the filter's file is watched like the
configuration files: an edit reloads it.
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
from typing import TYPE_CHECKING, Any

from sidecar.config.headerops import HeaderOps
from sidecar.config.resources import PythonFilter
from sidecar.errors import ConfigError, ResponseAborted
from sidecar.filters.chain import ORDER_TRANSFORM, Exchange, LocalReply, Verdict
from sidecar.http.staged import pause

if TYPE_CHECKING:
    from sidecar.http.downstream import ResponseWriter

Headers = list[tuple[bytes, bytes]]

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


# Fields a filter may not write on an answer: the framing and the connection are the hop's.
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive",
                      "upgrade", "te", "trailer", "proxy-connection"})  # fmt: skip


class Response:
    """An answer on its way to the client, as a Python filter sees and edits it."""

    __slots__ = ("_headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status  # settable: the status the client gets
        self._headers = headers

    def header(self, name: str) -> str | None:
        """The first value of a field (any case), or None."""
        key = name.lower().encode("latin-1")
        for n, v in self._headers:
            if n.lower() == key:
                return v.decode("latin-1")
        return None

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self._headers]

    def set_header(self, name: str, value: str) -> None:
        """Answer with this field (replacing the upstream's)."""
        key, text = _field(name, value)
        if key in _FRAMING:
            raise ValueError(f"{name} is the proxy's to write")
        self.remove_header(key)
        self._headers.append((key.encode("latin-1"), text.encode("latin-1")))

    def remove_header(self, name: str) -> None:
        key = name.lower().encode("latin-1")
        self._headers[:] = [h for h in self._headers if h[0].lower() != key]


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

    __slots__ = ("body_hook", "errors", "hooks", "impl", "name", "response_hook", "source")

    def __init__(self, name: str, impl: Any, source: str) -> None:
        self.name = name
        self.impl = impl
        self.source = source
        self.errors = 0  # failures so far (weft_filter_errors_total)
        self.response_hook = getattr(impl, "on_response", None)
        self.body_hook = getattr(impl, "on_response_body", None)
        self.hooks = self.response_hook is not None or self.body_hook is not None

    def on_request(self, x: Exchange) -> Verdict | Awaitable[Verdict]:
        try:
            result = self.impl.on_request(Request(x))
        except Exception as exc:
            return self._failed(x, exc)
        if self.hooks:
            x.add_stage(lambda writer: PythonResponse(writer, self, x), ORDER_TRANSFORM)
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
        return FAILED

    def describe(self) -> str:
        return f"Python filter {self.name} ({self.source})"


FAILED = LocalReply(500, b"a filter of this route failed\n", (), "filter_error")


class PythonResponse:
    """The response stage of a filter with `on_response` / `on_response_body`."""

    __slots__ = ("body", "next", "replaced", "runner", "x")

    def __init__(self, writer: ResponseWriter, runner: PythonFilterRunner, x: Exchange) -> None:
        self.next = writer
        self.runner = runner
        self.x = x
        self.body = False  # the body hook runs on this answer
        self.replaced = False  # a 500 went instead: the upstream's answer goes nowhere

    async def start(self, status: int, headers: Headers, *, end: bool) -> None:
        runner = self.runner
        edited = list(headers)
        if runner.response_hook is not None:
            response = Response(status, edited)
            try:
                result = runner.response_hook(response)
                if hasattr(result, "__await__"):
                    await result
                new = response.status
                if not isinstance(new, int) or not 200 <= new <= 599 or (
                    new != status and new in (204, 304)  # statuses without a body
                ):  # fmt: skip
                    raise ValueError(f"status {new!r} cannot answer this response")
            except Exception as exc:
                await self._reply(runner._failed(self.x, exc))
                return
            status = response.status
        if runner.body_hook is not None and not end:
            self.body = True  # the length may change: the client's framing says where it ends
            edited = [h for h in edited if h[0].lower() != b"content-length"]
        await self.next.start(status, edited, end=end)

    async def _reply(self, reply: LocalReply) -> None:
        self.replaced = True
        fields = [(b"content-type", b"text/plain; charset=utf-8"),
                  (b"content-length", b"%d" % len(reply.body))]  # fmt: skip
        await self.next.start(reply.status, fields, end=False)
        await self.next.data(reply.body)
        await self.next.end(None)

    async def data(self, data: bytes) -> None:
        if self.replaced:
            return
        if self.body:
            data = self._chunk(data, False)
        if data:
            await self.next.data(data)

    async def pause(self) -> None:
        if not self.replaced:
            await pause(self.next)

    async def end(self, trailers: Headers | None) -> None:
        if self.replaced:
            return
        if self.body:
            tail = self._chunk(b"", True)
            if tail:
                await self.next.data(tail)
        await self.next.end(trailers)

    def _chunk(self, data: bytes, end: bool) -> bytes:
        try:
            out = self.runner.body_hook(data, end)  # type: ignore[misc]
            if not isinstance(out, bytes | bytearray):
                raise TypeError(f"on_response_body returned {type(out).__name__}, not bytes")
            return bytes(out)
        except Exception as exc:
            self.runner._failed(self.x, exc)
            raise ResponseAborted(f"Python filter {self.runner.name}: {exc}") from None


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
