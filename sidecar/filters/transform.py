"""Transformations (weft.dev Transform, used by route rules through an ExtensionRef filter):
header values from templates over the request, query parameters set and removed, JSON
bodies edited in either direction, and answers replaced by a local response.

Templates are strings with `${…}` references, resolved per request:
`${method}`, `${host}`, `${path}`, `${client}`, `${path.NAME}` (a `{NAME}` segment of the
Transform's `pathTemplate`), `${query.NAME}`, `${header.NAME}` and `${jwt.CLAIM}` (a claim
of the token a SecurityPolicy verified). A header whose template refers to something the
request does not have is left unset; a value that would carry a control character is never
written.

JSON edits (`set`, `remove`, `rename` at paths like `$.order.items[0].sku`) need the whole
body: a request's is read (at most `maxBytes`, else 413; not JSON, 400), a response's is
held until it ends (more than `maxBytes` or not JSON: 502, so what was meant to be removed
never leaks). Bodies of other types stream through untouched, and a Transform without JSON
rules never holds a body.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode

from sidecar.config.headerops import HeaderOps
from sidecar.filters.chain import ORDER_TRANSFORM, Exchange, LocalReply
from sidecar.http.staged import pause

if TYPE_CHECKING:
    from sidecar.http.downstream import ResponseWriter

Headers = list[tuple[bytes, bytes]]
_REF = re.compile(r"\$\{([a-z]+)(?:\.([^}]+))?\}")
SOURCES = ("method", "host", "path", "client", "query", "header", "jwt", "part")
_SAFE_VALUE = re.compile(r"^[\t\x20-\x7e\x80-\xff]*$")
_STEP = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]")


class TemplateError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Template:
    """A string with `${source.name}` references, split once into its parts."""

    parts: tuple[str | tuple[str, str], ...]

    @staticmethod
    def parse(
        text: str, path_names: tuple[str, ...] = (), parts: tuple[str, ...] | None = None
    ) -> Template:
        """`parts`: the names a `${part.NAME.json.path}` may refer to (an Aggregation's
        parts; None elsewhere)."""
        out: list[str | tuple[str, str]] = []
        at = 0
        for m in _REF.finditer(text):
            source, name = m.group(1), m.group(2) or ""
            if source not in SOURCES or (source == "part" and parts is None):
                known = [s for s in SOURCES if s != "part" or parts is not None]
                raise TemplateError(f"${{{source}}}: unknown (one of {', '.join(known)})")
            if source in ("query", "header", "jwt", "part") and not name:
                raise TemplateError(f"${{{source}.NAME}} needs a name")
            if source == "path" and name and name not in path_names:
                raise TemplateError(f"${{path.{name}}}: not a parameter of pathTemplate")
            if source in ("method", "host", "client") and name:
                raise TemplateError(f"${{{source}}} takes no name")
            if source == "part":
                part = re.split(r"[.\[]", name, maxsplit=1)[0]
                if parts is None or part not in parts:
                    raise TemplateError(f"${{part.{name}}}: no part named {part!r}")
                if part != name:
                    parse_json_path("$" + name[len(part) :])
            if m.start() > at:
                out.append(text[at : m.start()])
            out.append((source, name.lower() if source == "header" else name))
            at = m.end()
        if at < len(text):
            out.append(text[at:])
        if "${" in "".join(p for p in out if isinstance(p, str)):
            raise TemplateError(f"{text!r}: an unclosed or malformed ${{…}}")
        return Template(tuple(out))

    def refers_to(self, source: str) -> list[str]:
        """The names this template takes from `source`."""
        return [p[1] for p in self.parts if isinstance(p, tuple) and p[0] == source]

    def render(
        self, x: Exchange, params: dict[str, str], query: dict[str, str],
        parts: dict[str, Any] | None = None, *, encode: bool = False,
    ) -> str | None:  # fmt: skip
        """The value for this request; None when a reference has no value here.
        `encode`: values go into a URL (percent-encoded, but for `${path.…}`, which is
        taken from the request's path as it came)."""
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = _lookup(x, part[0], part[1], params, query, parts)
            if value is None:
                return None
            if encode and part[0] != "path":
                value = quote(value, safe="-._~")
            out.append(value)
        text = "".join(out)
        return text if _SAFE_VALUE.match(text) else None


def _lookup(x: Exchange, source: str, name: str, params: dict[str, str],
            query: dict[str, str], parts: dict[str, Any] | None) -> str | None:  # fmt: skip
    if source == "method":
        return x.method
    if source == "host":
        return x.authority
    if source == "client":
        return x.client
    if source == "path":
        return params.get(name) if name else x.path
    if source == "query":
        return query.get(name)
    if source == "header":
        value = x.header(name.encode("latin-1"))
        return value.decode("latin-1") if value is not None else None
    if source == "part":
        found, got = _part_value(parts or {}, name)  # (not `value`: bytes above, compiled)
        return _text(got) if found else None
    if x.jwt is None:  # jwt
        return None
    claim = x.jwt[1].get(name)
    return None if claim is None else _text(claim)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _part_value(parts: dict[str, Any], name: str) -> tuple[bool, Any]:
    part = re.split(r"[.\[]", name, maxsplit=1)[0]
    if part not in parts:
        return False, None
    node = parts[part]
    rest = name[len(part) :]
    for step in parse_json_path("$" + rest) if rest else ():
        if isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                return False, None
        elif not isinstance(node, dict) or step not in node:
            return False, None
        node = node[step]
    return True, node


# -- JSON paths -----------------------------------------------------------------------------
Path = tuple[str | int, ...]


def parse_json_path(text: str) -> Path:
    """`$.a.b[0].c` (or `a.b[0].c`) as its steps; ValueError when it is not one."""
    body = text[1:] if text.startswith("$") else "." + text
    steps: list[str | int] = []
    at = 0
    for m in _STEP.finditer(body):
        if m.start() != at:
            break
        steps.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        at = m.end()
    if at != len(body) or not steps:
        raise ValueError(f"{text!r} is not a JSON path like $.order.items[0].sku")
    return tuple(steps)


def _parent(doc: Any, path: Path, create: bool) -> Any:
    node = doc
    for step in path[:-1]:
        if isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                return None
            node = node[step]
        elif isinstance(node, dict):
            if step not in node:
                if not create:
                    return None
                node[step] = {}
            node = node[step]
        else:
            return None
    return node


def json_set(doc: Any, path: Path, value: Any) -> None:
    node = _parent(doc, path, True)
    last = path[-1]
    if isinstance(last, int):
        if isinstance(node, list) and last < len(node):
            node[last] = value
    elif isinstance(node, dict):
        node[last] = value


def json_take(doc: Any, path: Path) -> tuple[bool, Any]:
    """Remove what is at `path`: (whether it was there, its value)."""
    node = _parent(doc, path, False)
    last = path[-1]
    if isinstance(last, int):
        if isinstance(node, list) and last < len(node):
            return True, node.pop(last)
    elif isinstance(node, dict) and last in node:
        return True, node.pop(last)
    return False, None


@dataclass(frozen=True, slots=True)
class JsonEdits:
    set: tuple[tuple[Path, str], ...] = ()  # (path, the value as JSON text)
    remove: tuple[Path, ...] = ()
    rename: tuple[tuple[Path, Path], ...] = ()
    max_bytes: int = 1 << 20

    def apply(self, body: bytes) -> bytes | None:
        """The edited document, or None when `body` is not JSON."""
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            return None
        for old, new in self.rename:
            found, value = json_take(doc, old)
            if found:
                json_set(doc, new, value)
        for path in self.remove:
            json_take(doc, path)
        for path, value in self.set:
            json_set(doc, path, json.loads(value))
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


# -- the resource's compiled form ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HeaderEdits:
    set: tuple[tuple[str, Template], ...] = ()  # lower-case names
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Replacement:
    """A local response: every request's answer, or the answer instead of the upstream's
    when its status is one of `on_status`."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    on_status: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class TransformSpec:
    path_template: re.Pattern[str] | None = None
    request_headers: HeaderEdits = HeaderEdits()
    response_headers: HeaderEdits = HeaderEdits()
    query_set: tuple[tuple[str, Template], ...] = ()
    query_remove: tuple[str, ...] = ()
    request_json: JsonEdits | None = None
    response_json: JsonEdits | None = None
    replacement: Replacement | None = None


NOT_JSON = LocalReply(400, b"the request body is not JSON\n", (), "transform_not_json")
TOO_LARGE = LocalReply(413, b"request body too large to transform\n", (), "transform_too_large")


class TransformFilter:
    __slots__ = ("name", "spec")

    def __init__(self, name: str, spec: TransformSpec) -> None:
        self.name = name
        self.spec = spec

    def on_request(self, x: Exchange) -> LocalReply | None:
        spec = self.spec
        rep = spec.replacement
        if rep is not None and not rep.on_status:
            return LocalReply(rep.status, rep.body, rep.headers, "local_response")
        params: dict[str, str] = {}
        if spec.path_template is not None and (m := spec.path_template.match(x.path)):
            params = m.groupdict()
        query = dict(parse_qsl(x.query, keep_blank_values=True)) if x.query else {}
        for edits, ops in ((spec.request_headers, x.request_ops),
                           (spec.response_headers, x.response_ops)):  # fmt: skip
            if edits.set or edits.remove:
                pairs = []
                for name, template in edits.set:
                    value = template.render(x, params, query)
                    if value is not None:
                        pairs.append((name, value))
                ops.append(HeaderOps.build(set_=tuple(pairs), remove=edits.remove))
        if spec.query_set or spec.query_remove:
            items = [(k, v) for k, v in parse_qsl(x.query, keep_blank_values=True)
                     if k not in spec.query_remove]  # fmt: skip
            for name, template in spec.query_set:
                value = template.render(x, params, query)
                if value is not None:
                    items = [(k, v) for k, v in items if k != name] + [(name, value)]
            new_query = urlencode(items, quote_via=quote)
            x.target = f"{x.path}?{new_query}" if new_query else x.path
        if spec.request_json is not None and _is_json(x.header(b"content-type")):
            json_edits = spec.request_json
            x.add_body_rewrite(lambda body: _edit_request(json_edits, body))
        if spec.response_json is not None:
            x.request_ops.append(_IDENTITY)  # an encoded answer could not be edited
        if spec.response_json is not None or rep is not None:
            x.add_stage(lambda writer: Reshaping(writer, spec, x.method), ORDER_TRANSFORM)
        return None

    def describe(self) -> str:
        return f"transform {self.name}"


_IDENTITY = HeaderOps.build(remove=("accept-encoding",))


def _edit_request(edits: JsonEdits, body: bytes) -> bytes | LocalReply:
    if len(body) > edits.max_bytes:
        return TOO_LARGE
    edited = edits.apply(body)
    return NOT_JSON if edited is None else edited


def _is_json(content_type: bytes | None) -> bool:
    if content_type is None:
        return False
    kind = content_type.split(b";", 1)[0].strip().lower()
    return kind == b"application/json" or kind.endswith(b"+json")


class Reshaping:
    """The response stage: the answer replaced (a local response for chosen statuses), or
    its JSON body edited (held until it ends)."""

    __slots__ = (
        "body",
        "failed",
        "head_only",
        "headers",
        "holding",
        "next",
        "skip",
        "spec",
        "status",
    )  # fmt: skip

    def __init__(self, writer: ResponseWriter, spec: TransformSpec, method: str) -> None:
        self.next = writer
        self.spec = spec
        self.head_only = method == "HEAD"
        self.holding = False
        self.skip = False  # replaced: the upstream's body goes nowhere
        self.failed = False
        self.body = bytearray()
        self.status = 0
        self.headers: Headers = []

    async def start(self, status: int, headers: Headers, *, end: bool) -> None:
        rep = self.spec.replacement
        if rep is not None and status in rep.on_status:
            self.skip = True
            body = b"" if self.head_only else rep.body
            fields = [*rep.headers, (b"content-length", b"%d" % len(rep.body))]
            await self.next.start(rep.status, fields, end=not body)
            if body:
                await self.next.data(body)
                await self.next.end(None)
            return
        content_type = next((v for n, v in headers if n.lower() == b"content-type"), None)
        if self.spec.response_json is None or end or not _is_json(content_type):
            await self.next.start(status, headers, end=end)
            return
        encoded = any(n.lower() == b"content-encoding" and v.strip().lower() != b"identity"
                      for n, v in headers)  # fmt: skip
        if encoded:
            await self._refuse(b"the upstream's JSON answer is encoded and cannot be edited\n")
            return
        self.holding = True
        self.status = status
        self.headers = [h for h in headers if h[0].lower() not in (b"content-length", b"etag")]

    async def data(self, data: bytes) -> None:
        if self.skip or self.failed:
            return
        if not self.holding:
            await self.next.data(data)
            return
        self.body += data
        assert self.spec.response_json is not None
        if len(self.body) > self.spec.response_json.max_bytes:
            await self._refuse(b"the upstream's answer is too large to transform\n")

    async def pause(self) -> None:
        if not (self.holding or self.skip or self.failed):
            await pause(self.next)

    async def end(self, trailers: Headers | None) -> None:
        if self.skip or self.failed:
            return
        if not self.holding:
            await self.next.end(trailers)
            return
        assert self.spec.response_json is not None
        edited = self.spec.response_json.apply(bytes(self.body))
        if edited is None:
            await self._refuse(b"the upstream's answer is not JSON\n")
            return
        fields = [*self.headers, (b"content-length", b"%d" % len(edited))]
        await self.next.start(self.status, fields, end=False)
        await self.next.data(edited)
        await self.next.end(trailers)

    async def _refuse(self, why: bytes) -> None:
        self.failed = True
        self.holding = False
        fields = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(why)),
            (b"x-weft-proxy-error", b"transform"),
        ]
        await self.next.start(502, fields, end=False)
        await self.next.data(why)
        await self.next.end(None)
