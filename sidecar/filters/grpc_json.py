"""REST to gRPC transcoding (weft.dev GrpcJsonTranscoder, used by route rules through an
ExtensionRef filter): JSON over HTTP in front of a gRPC service, from its
`google.api.http` annotations.

Theory of operation. The resource names a descriptor set (`protoc --include_imports
--descriptor_set_out`); each annotated method becomes a binding: an HTTP method and a path
template (`/v1/items/{sku}`, `/v1/{name=shelves/*}`, verbs like `:watch`). A request that
matches a binding is turned into the method's request message:
- the JSON body, whole (`body: "*"`) or as one field (`body: "rating"`);
- the path's variables;
- the query's parameters (`?text=tea&page.size=2`; repeated fields take every value),
  unless the whole body is the message.

It is forwarded as a gRPC call on the route's backend: POST `/package.Service/Method`,
`application/grpc`, one length-prefixed message. The request head and the body rewrite
are the filter chain's (Exchange.target, forward_method, body_rewrite).

The answer's stage decodes the gRPC messages as they arrive and writes JSON with
protobuf's `json_format`:
- a unary method's message is the body;
- a server-streaming method's messages are newline-delimited JSON, written as they come.

`grpc-status` maps to the HTTP status by the published table (google.rpc.Code to HTTP);
an error's body is `{"code", "message"}`. A stream that fails after its first message ends
with an `{"error": {...}}` line. Requests that match no binding go on untouched (a route
may carry gRPC and JSON clients alike).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

from sidecar.config.headerops import HeaderOps
from sidecar.filters.chain import ORDER_TRANSFORM, Exchange, LocalReply
from sidecar.http.staged import pause

if TYPE_CHECKING:
    from google.protobuf.descriptor import Descriptor  # type: ignore[import-untyped]

    from sidecar.http.downstream import ResponseWriter

Headers = list[tuple[bytes, bytes]]
JSON = (b"content-type", b"application/json")
NDJSON = (b"content-type", b"application/x-ndjson")
# google.rpc.Code -> HTTP status (googleapis' google/rpc/code.proto, the HTTP mapping)
HTTP_STATUS = {0: 200, 1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400,
               10: 409, 11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401}  # fmt: skip
_FRAME = struct.Struct(">BI")


class TranscodeError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Binding:
    http_method: str
    pattern: re.Pattern[str]
    variables: tuple[tuple[str, str], ...]  # (regex group, field path)
    body: str  # "" none, "*" the whole message, else a field
    rpc_path: str  # /package.Service/Method
    input: Any  # the request message class
    output: Any  # the response message class
    streaming: bool  # server streaming


@dataclass(frozen=True, slots=True)
class TranscoderSpec:
    bindings: tuple[Binding, ...]
    max_bytes: int = 1 << 20
    proto_names: bool = False  # JSON field names as in the .proto (default lowerCamelCase)


def load(descriptor_set: bytes, services: tuple[str, ...]) -> tuple[Binding, ...]:
    """The bindings of the annotated methods of `services` (all, when empty);
    TranscodeError saying what is wrong."""
    from google.api.annotations_pb2 import http as http_option  # type: ignore[import-untyped]
    from google.protobuf import (  # type: ignore[import-untyped]
        descriptor_pb2,
        descriptor_pool,
        message_factory,
    )

    try:
        files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
    except Exception as exc:  # the library's DecodeError
        raise TranscodeError(f"not a descriptor set: {exc}") from None
    pool = descriptor_pool.DescriptorPool()
    try:
        for f in files.file:
            pool.Add(f)
    except Exception as exc:  # TypeError on a missing dependency, and others
        raise TranscodeError(f"the descriptor set does not load ({exc}); was it made "
                             "with --include_imports?") from None  # fmt: skip
    bindings: list[Binding] = []
    seen: set[str] = set()
    for f in files.file:
        for svc in f.service:
            full = f"{f.package}.{svc.name}" if f.package else svc.name
            if services and full not in services:
                continue
            seen.add(full)
            for m in svc.method:
                if not m.options.HasExtension(http_option):
                    continue
                if m.client_streaming:
                    raise TranscodeError(f"{full}.{m.name}: client streaming cannot be "
                                         "transcoded")  # fmt: skip
                rule = m.options.Extensions[http_option]
                rules = [rule, *rule.additional_bindings]
                desc_in = pool.FindMessageTypeByName(m.input_type.lstrip("."))
                desc_out = pool.FindMessageTypeByName(m.output_type.lstrip("."))
                for r in rules:
                    kind = r.WhichOneof("pattern")
                    if kind is None or kind == "custom":
                        raise TranscodeError(f"{full}.{m.name}: a custom pattern is not "
                                             "supported")  # fmt: skip
                    template = getattr(r, kind)
                    pattern, variables = compile_template(template)
                    for _, path in variables:
                        field_path(desc_in, path, f"{full}.{m.name}")
                    if r.body and r.body != "*":
                        field_path(desc_in, r.body, f"{full}.{m.name}")
                    bindings.append(Binding(
                        http_method=kind.upper(), pattern=pattern, variables=variables,
                        body=r.body, rpc_path=f"/{full}/{m.name}",
                        input=message_factory.GetMessageClass(desc_in),
                        output=message_factory.GetMessageClass(desc_out),
                        streaming=m.server_streaming,
                    ))  # fmt: skip
    missing = [s for s in services if s not in seen]
    if missing:
        raise TranscodeError(f"service {missing[0]} is not in the descriptor set")
    if not bindings:
        raise TranscodeError("no method has a google.api.http option")
    return tuple(bindings)


_VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)(?:=([^{}]+))?\}")
_LITERAL = re.compile(r"[^/{}*:]+")


def compile_template(template: str) -> tuple[re.Pattern[str], tuple[tuple[str, str], ...]]:
    """google.api.http's path template as a pattern. Its grammar, segment by segment: `*`
    is one segment, `**` any number (last only), `{field}` or `{field=segments}` is
    captured, anything else is literal; a `:verb` may end it. Whole segments only: the
    pattern matches in linear time, whatever the template."""
    bad = TranscodeError(f"path template {template!r} is malformed")
    if not template.startswith("/"):
        raise TranscodeError(f"path template {template!r} must start with /")
    segments = _split(template[1:])
    verb = ""
    if segments and ":" in segments[-1] and not segments[-1].endswith("}"):
        segments[-1], _, verb = segments[-1].rpartition(":")
        if not _LITERAL.fullmatch(verb):
            raise bad
    variables: list[tuple[str, str]] = []
    out = []
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        m = _VARIABLE.fullmatch(seg)
        if m is None:
            out.append(_segment(seg, last, bad))
            continue
        inner = (m.group(2) or "*").split("/")
        group = f"v{len(variables)}"
        sub = "/".join(_segment(x, last and j == len(inner) - 1, bad) for j, x in enumerate(inner))
        out.append(f"(?P<{group}>{sub})")
        variables.append((group, m.group(1)))
    pattern = "^/" + "/".join(out)
    if verb:  # the last segment stops where the verb starts
        pattern = pattern.replace("[^/]+", "[^/:]+") + re.escape(":" + verb)
    return re.compile(pattern + "$"), tuple(variables)


def _split(path: str) -> list[str]:
    """Segments at the slashes outside `{…}`."""
    out, depth, at = [], 0, 0
    for i, c in enumerate(path):
        depth += (c == "{") - (c == "}")
        if c == "/" and depth == 0:
            out.append(path[at:i])
            at = i + 1
    out.append(path[at:])
    return out


def _segment(seg: str, last: bool, bad: TranscodeError) -> str:
    if seg == "*":
        return "[^/]+"
    if seg == "**" and last:
        return ".*"
    if _LITERAL.fullmatch(seg):
        return re.escape(seg)
    raise bad


def field_path(desc: Descriptor, path: str, where: str) -> Any:
    """The field at `a.b.c` of a message type (TranscodeError when there is none)."""
    field = None
    for step in path.split("."):
        if desc is None:
            raise TranscodeError(f"{where}: {path} goes through a field that is not a message")
        field = desc.fields_by_name.get(step)
        if field is None:
            raise TranscodeError(f"{where}: the request has no field {path}")
        desc = field.message_type
    return field


class TranscoderFilter:
    __slots__ = ("name", "spec")

    def __init__(self, name: str, spec: TranscoderSpec) -> None:
        self.name = name
        self.spec = spec

    def on_request(self, x: Exchange) -> LocalReply | None:
        for b in self.spec.bindings:
            if b.http_method != x.method:
                continue
            m = b.pattern.match(x.path)
            if m is None:
                continue
            fields: dict[str, Any] = {}
            for group, path in b.variables:
                _put(b.input.DESCRIPTOR, fields, path, unquote(m.group(group)), single=True)
            if b.body != "*" and x.query:
                for key, value in parse_qsl(x.query, keep_blank_values=True):
                    try:
                        _put(b.input.DESCRIPTOR, fields, key, value, single=False)
                    except TranscodeError:
                        continue  # not a field of the request (a cache buster, say)
            self._bind(x, b, fields)
            return None
        return None

    def _bind(self, x: Exchange, b: Binding, fields: dict[str, Any]) -> None:
        """Forward `x` as a call of `b`'s method, and its answer as JSON."""
        spec = self.spec
        x.add_body_rewrite(lambda body: _request(b, fields, body, spec.max_bytes))
        x.body_always = True
        x.target = b.rpc_path
        x.forward_method = "POST"
        x.request_ops.append(_GRPC_REQUEST)
        x.add_stage(lambda writer: Transcoding(writer, b, spec), ORDER_TRANSFORM)

    def describe(self) -> str:
        return f"gRPC-JSON transcoder {self.name}: {len(self.spec.bindings)} binding(s)"


_GRPC_REQUEST = HeaderOps.build(
    set_=(("content-type", "application/grpc"), ("te", "trailers")),
    remove=("accept-encoding", "content-encoding"),
)


def _put(desc: Descriptor, out: dict[str, Any], path: str, value: str, *, single: bool) -> None:
    """Set `a.b.c` in the JSON-shaped dict that becomes the message: the value converted
    for the field's type, appended for repeated fields."""
    field = field_path(desc, path, "request")
    if field.message_type is not None:
        raise TranscodeError(f"{path} is a message, not a value")
    node = out
    steps = path.split(".")
    for step in steps[:-1]:
        node = node.setdefault(step, {})
    typed: Any = value
    if field.type == field.TYPE_BOOL:
        typed = value.lower() in ("true", "1")
    if field.is_repeated and not single:
        node.setdefault(steps[-1], []).append(typed)
    else:
        node[steps[-1]] = typed


def _request(b: Binding, fields: dict[str, Any], body: bytes, limit: int) -> bytes | LocalReply:
    from google.protobuf import json_format

    if len(body) > limit:
        return LocalReply(413, b'{"code": 3, "message": "body too large"}\n', (JSON,),
                          "transcode_too_large")  # fmt: skip
    doc: dict[str, Any] = {}
    try:
        if b.body and body.strip():
            parsed = json.loads(body)
            if b.body == "*":
                if not isinstance(parsed, dict):
                    raise ValueError("the body must be a JSON object")
                doc = parsed
            else:
                doc = {}
                node = doc
                steps = b.body.split(".")
                for step in steps[:-1]:
                    node = node.setdefault(step, {})
                node[steps[-1]] = parsed
        _merge(doc, fields)
        message = json_format.ParseDict(doc, b.input())
    except (ValueError, RecursionError, json_format.ParseError) as exc:
        why = json.dumps({"code": 3, "message": f"invalid request: {exc}"}).encode() + b"\n"
        return LocalReply(400, why, (JSON,), "transcode_invalid")
    data: bytes = message.SerializeToString()
    return _FRAME.pack(0, len(data)) + data


def _merge(into: dict[str, Any], more: dict[str, Any]) -> None:
    for k, v in more.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


class Transcoding:
    """The response stage: gRPC messages in, JSON out (see the module docstring)."""

    __slots__ = ("binding", "buffer", "done", "failed", "messages", "next", "spec", "started",
                 "status")  # fmt: skip

    def __init__(self, writer: ResponseWriter, binding: Binding, spec: TranscoderSpec) -> None:
        self.next = writer
        self.binding = binding
        self.spec = spec
        self.buffer = bytearray()
        self.messages: list[bytes] = []  # a unary answer's JSON, until its status is known
        self.started = False  # the client has its head (a stream)
        self.done = False  # the client has its whole answer: the rest is dropped
        self.failed = ""  # why the answer could not be transcoded
        self.status = 0

    async def start(self, status: int, headers: Headers, *, end: bool) -> None:
        self.status = status
        if end or status != 200:  # trailers-only (an error), or not gRPC at all
            await self._finish(headers)
            return
        if self.binding.streaming:
            self.started = True
            await self.next.start(200, [NDJSON], end=False)

    async def data(self, data: bytes) -> None:
        if self.done or self.failed:
            return
        self.buffer += data
        buf = self.buffer
        while len(buf) >= 5:
            flags, size = _FRAME.unpack_from(buf)
            if size > self.spec.max_bytes or flags & 1:
                self.failed = "an answer message over maxBytes, or compressed"
                del buf[:]
                return
            if len(buf) < 5 + size:
                break
            try:
                out = self._json(bytes(buf[5 : 5 + size]))
            except Exception:  # the library's DecodeError: not the declared message
                self.failed = "an answer message that does not decode"
                del buf[:]
                return
            del buf[: 5 + size]
            if self.binding.streaming:
                await self.next.data(out + b"\n")
            else:
                self.messages.append(out)

    async def pause(self) -> None:
        if self.started and not self.done:
            await pause(self.next)

    async def end(self, trailers: Headers | None) -> None:
        if not self.done:
            await self._finish(trailers or [])

    async def _finish(self, fields: Headers) -> None:
        self.done = True
        code, message = _grpc_status(fields, self.status)
        if self.failed and code == 0:
            code, message = 13, self.failed
        if self.started:  # a stream: its status is the last line when it failed
            if code:
                line = json.dumps({"error": {"code": code, "message": message}}).encode()
                await self.next.data(line + b"\n")
            await self.next.end(None)
            return
        if code == 0 and len(self.messages) == 1:
            body = self.messages[0]
            status = 200
        elif code == 0 and self.binding.streaming:  # a stream that ended with no message
            body, status = b"", 200
        else:
            if code == 0:
                code, message = 13, "the method did not answer one message"
            body = json.dumps({"code": code, "message": message}).encode()
            status = HTTP_STATUS.get(code, 500)
        kind = NDJSON if self.binding.streaming else JSON
        await self.next.start(status, [kind, (b"content-length", b"%d" % len(body))], end=not body)
        if body:
            await self.next.data(body)
            await self.next.end(None)

    def _json(self, data: bytes) -> bytes:
        from google.protobuf import json_format

        message = self.binding.output.FromString(data)
        names = self.spec.proto_names
        text: str = json_format.MessageToJson(message, indent=None,
                                              preserving_proto_field_name=names)  # fmt: skip
        return text.encode()


def _grpc_status(fields: Headers, http_status: int) -> tuple[int, str]:
    """(grpc-status, grpc-message) of trailers (or a trailers-only head); an answer that is
    not gRPC maps its HTTP status to the code gRPC clients use (UNKNOWN, UNAVAILABLE…)."""
    code: int | None = None
    message = ""
    for name, value in fields:
        n = name.lower()
        if n == b"grpc-status" and value.strip().isdigit():
            code = int(value)
        elif n == b"grpc-message":
            message = unquote(value.decode("latin-1"))
    if code is None:
        if http_status == 200:
            return 0, ""
        code = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}.get(
            http_status, 2
        )  # fmt: skip (the gRPC HTTP-to-status table)
        message = f"the upstream answered HTTP {http_status}"
    return code, message
