"""Transform (weft.dev/v1alpha1): what the route rules that use it through an ExtensionRef
filter change in requests and answers (filters/transform.py applies it).

    spec:
      pathTemplate: /orders/{id}            # names path segments for ${path.id}
      request:
        headers: {set: [{name: x-user, value: "${jwt.sub}"}], remove: [x-debug]}
        query: {set: [{name: v, value: "2"}], remove: [debug]}
        json: {maxBytes: 1048576, set: [{path: $.source, value: edge}],
               remove: [$.internal], rename: [{from: $.userName, to: $.user_name}]}
      response:
        headers: {set: [...], remove: [...]}
        json: {...}
      localResponse: {status: 503, body: "down for maintenance\\n",
                      headers: [{name: retry-after, value: "120"}], onStatus: [502, 503]}
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sidecar.config.headerops import HOP_WRITTEN, field_key
from sidecar.config.reader import Reader
from sidecar.config.resources import GrpcJsonTranscoder, Meta, Transform
from sidecar.filters.transform import (
    HeaderEdits,
    JsonEdits,
    Replacement,
    Template,
    TemplateError,
    TransformSpec,
    parse_json_path,
)

_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def parse_transform(top: Reader, meta: Meta) -> Transform:
    spec = top.req_obj("spec")
    pattern: re.Pattern[str] | None = None
    names: tuple[str, ...] = ()
    if spec.has("pathTemplate"):
        text = spec.text("pathTemplate", max_len=1024)
        if not text.startswith("/"):
            spec.fail("pathTemplate", "must start with /")
        pattern, names = path_template(spec, text)
    out = TransformSpec(path_template=pattern)
    req, resp = spec.obj("request"), spec.obj("response")
    if req is not None:
        headers = _headers(req.obj("headers"), names)
        query_set: tuple[tuple[str, Template], ...] = ()
        query_remove: tuple[str, ...] = ()
        if (q := req.obj("query")) is not None:
            query_set = tuple((s.text("name", max_len=256), _template(s, "value", names))
                              for s in q.objs("set", max_items=64))  # fmt: skip
            query_remove = tuple(q.str_list("remove", max_len=256))
            q.finish()
        request_json = _json(req.obj("json"))
        req.finish()
        out = _replace(out, request_headers=headers, query_set=query_set,
                       query_remove=query_remove, request_json=request_json)  # fmt: skip
    if resp is not None:
        out = _replace(out, response_headers=_headers(resp.obj("headers"), names),
                       response_json=_json(resp.obj("json")))  # fmt: skip
        resp.finish()
    if (lr := spec.obj("localResponse")) is not None:
        body = lr.text("body", "", max_len=1 << 20).encode()
        fields = []
        for h in lr.objs("headers", max_items=32):
            name = h.text("name", pattern=_NAME).lower()
            value = h.text("value", max_len=8192)
            if any(c in value for c in "\r\n\0"):
                h.fail("value", "must not contain CR, LF or NUL")
            fields.append((name.encode(), value.encode("latin-1", "replace")))
            h.finish()
        if body and not any(n == b"content-type" for n, _ in fields):
            fields.append((b"content-type", b"text/plain; charset=utf-8"))
        on_status = frozenset(int(s) for s in _statuses(lr))
        out = _replace(out, replacement=Replacement(
            status=lr.integer("status", 200, lo=200, hi=599), body=body,
            headers=tuple(fields), on_status=on_status))  # fmt: skip
        lr.finish()
    spec.finish()
    if out == TransformSpec(path_template=pattern):
        top.fail("spec", "changes nothing (give request, response or localResponse)")
    return Transform(meta=meta, spec=out)


def _replace(spec: TransformSpec, **changes: object) -> TransformSpec:
    import dataclasses

    return dataclasses.replace(spec, **changes)  # type: ignore[arg-type]


def _statuses(r: Reader) -> list[int]:
    value = r.raw("onStatus", [])
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 100 <= v <= 599 for v in value
    ):
        r.fail("onStatus", "must be a list of HTTP statuses")
    return value


def path_template(r: Reader, text: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """`/orders/{id}` as a pattern whose groups are the named segments."""
    names: list[str] = []
    out = "^"
    at = 0
    for m in _PARAM.finditer(text):
        if m.group(1) in names:
            r.fail("pathTemplate", f"{{{m.group(1)}}} appears twice")
        out += re.escape(text[at : m.start()]) + f"(?P<{m.group(1)}>[^/]+)"
        names.append(m.group(1))
        at = m.end()
    out += re.escape(text[at:]) + "$"
    return re.compile(out), tuple(names)


def _template(r: Reader, key: str, names: tuple[str, ...]) -> Template:
    text = r.text(key, max_len=8192)
    try:
        return Template.parse(text, names)
    except TemplateError as exc:
        r.fail(key, str(exc))


def _headers(r: Reader | None, names: tuple[str, ...]) -> HeaderEdits:
    if r is None:
        return HeaderEdits()
    sets = []
    for s in r.objs("set", max_items=64):
        name = s.text("name", pattern=_NAME).lower()
        if field_key(name.encode()) in HOP_WRITTEN:
            s.fail("name", f"{name} is written by the proxy itself")
        sets.append((name, _template(s, "value", names)))
        s.finish()
    remove = tuple(n.lower() for n in r.str_list("remove", pattern=_NAME))
    for n in remove:
        if field_key(n.encode()) in HOP_WRITTEN:
            r.fail("remove", f"{n} is written by the proxy itself")
    r.finish()
    return HeaderEdits(set=tuple(sets), remove=remove)


def _json(r: Reader | None) -> JsonEdits | None:
    if r is None:
        return None

    def path(rr: Reader, key: str) -> tuple[str | int, ...]:
        text = rr.text(key, max_len=1024)
        try:
            return parse_json_path(text)
        except ValueError as exc:
            rr.fail(key, str(exc))

    sets = []
    for s in r.objs("set", max_items=64):
        sets.append((path(s, "path"), json.dumps(s.raw("value"))))
        s.finish()
    removes = []
    for i, text in enumerate(r.str_list("remove", max_len=1024)):
        try:
            removes.append(parse_json_path(text))
        except ValueError as exc:
            r.fail(f"remove[{i}]", str(exc))
    renames = []
    for s in r.objs("rename", max_items=64):
        renames.append((path(s, "from"), path(s, "to")))
        s.finish()
    edits = JsonEdits(set=tuple(sets), remove=tuple(removes), rename=tuple(renames),
                      max_bytes=r.integer("maxBytes", 1 << 20, lo=1, hi=64 << 20))  # fmt: skip
    r.finish()
    return edits


def parse_grpc_json_transcoder(
    top: Reader, meta: Meta, base_dir: Path | None
) -> GrpcJsonTranscoder:
    """GrpcJsonTranscoder (weft.dev/v1alpha1): JSON over HTTP for a gRPC service, from the
    `google.api.http` options in its descriptor set (filters/grpc_json.py)."""
    from sidecar.filters.grpc_json import TranscodeError, TranscoderSpec, load

    spec = top.req_obj("spec")
    path = Path(spec.text("descriptorSet", max_len=4096))
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    services = tuple(spec.str_list("services", max_len=256))
    try:
        bindings = load(path.read_bytes(), services)
    except OSError as exc:
        spec.fail("descriptorSet", f"cannot read {path}: {exc.strerror}")
    except TranscodeError as exc:
        spec.fail("descriptorSet", f"{path}: {exc}")
    out = TranscoderSpec(
        bindings=bindings,
        max_bytes=spec.integer("maxBytes", 1 << 20, lo=1, hi=64 << 20),
        proto_names=spec.flag("preserveProtoFieldNames", False),
    )
    spec.finish()
    return GrpcJsonTranscoder(meta=meta, spec=out)
