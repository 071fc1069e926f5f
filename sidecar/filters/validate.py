"""Request validation (an HTTPRoute ExtensionRef to a weft.dev `RequestValidation`):
allowed methods, required fields, a body size limit and a JSON Schema for bodies,
checked at the edge so that what reaches the backend has the shape it expects.

Theory of operation. Methods and fields are checked on the head: 405 with `Allow`,
400 naming the missing field. The size limit is the route's: a declared Content-Length
over it is answered 413 at once, a chunked or HTTP/2 body as soon as it passes it while
streaming (the codecs count, `Downstream.limit_body`). With a schema, the body is read
whole (never more than the limit), parsed as JSON and validated by `jsonschema` (the
schema's own dialect, Draft 2020-12 when it names none); a failure is 400 with the first
error's JSON path and message, and a body that passes is forwarded unchanged, as it came.
POST, PUT and PATCH requests must carry a body then; other methods' bodies are checked
when present. A JSON body must say so (`Content-Type: application/json` or `+json`),
else 415.
"""

from __future__ import annotations

import json
from typing import Any

from sidecar.config.resources import RequestValidation
from sidecar.filters.chain import Exchange, LocalReply

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
MAX_MESSAGE = 200  # characters of a validation message in the answer


def compile_schema(schema: Any) -> Any:
    """A validator for `schema` (jsonschema.SchemaError when the schema is not valid in
    its dialect). Remote `$ref`s are never fetched."""
    from jsonschema import Draft202012Validator, validators

    cls = validators.validator_for(schema, default=Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema)


class ValidationFilter:
    __slots__ = ("allow", "config", "missing", "refused", "validator")

    def __init__(self, config: RequestValidation) -> None:
        self.config = config
        schema = json.loads(config.json_schema) if config.json_schema else None
        self.validator = compile_schema(schema) if schema is not None else None
        methods = ", ".join(sorted(config.methods)).encode()
        self.allow = LocalReply(405, b"method not allowed\n", ((b"allow", methods),),
                                "method_not_allowed")  # fmt: skip
        self.refused = LocalReply(415, b"the body must be JSON (Content-Type: application/json)\n",
                                  (), "unsupported_media_type")  # fmt: skip
        self.missing = {
            h: LocalReply(400, b"missing required header %b\n" % h, (), "missing_header")
            for h in config.required_headers
        }

    def describe(self) -> str:
        c = self.config
        parts = []
        if c.methods:
            parts.append(f"methods {', '.join(sorted(c.methods))}")
        if c.required_headers:
            parts.append(f"required {', '.join(h.decode() for h in c.required_headers)}")
        if c.max_body_bytes:
            parts.append(f"body up to {c.max_body_bytes} bytes")
        if c.json_schema:
            parts.append("JSON Schema")
        return f"request validation {c.meta.namespace}/{c.meta.name}: {'; '.join(parts)}"

    def on_request(self, x: Exchange) -> LocalReply | None:
        c = self.config
        if c.methods and x.method not in c.methods:
            return self.allow
        for name, reply in self.missing.items():
            if x.header(name) is None:
                return reply
        if c.max_body_bytes:
            x.max_body = c.max_body_bytes
        if self.validator is not None:
            method, json_body = x.method, _is_json(x.header(b"content-type"))
            x.body_check = lambda body: self.check(method, json_body, body)
        return None

    def check(self, method: str, json_body: bool, body: bytes) -> LocalReply | None:
        """The verdict on a whole body (None: valid)."""
        assert self.validator is not None
        if not body and method not in BODY_METHODS:
            return None
        if not json_body:
            return self.refused
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            return _invalid("the body is not JSON", "$", str(exc))
        from jsonschema.exceptions import best_match

        try:
            first = best_match(self.validator.iter_errors(doc))
        except RecursionError:
            return _invalid("the body is nested too deeply", "$", "")
        if first is None:
            return None
        return _invalid("the body does not match the schema", first.json_path, first.message)


def _invalid(error: str, path: str, message: str) -> LocalReply:
    doc = {"error": error, "path": path, "message": message[:MAX_MESSAGE]}
    body = json.dumps(doc).encode() + b"\n"
    return LocalReply(400, body, ((b"content-type", b"application/json"),), "schema_invalid")


def _is_json(content_type: bytes | None) -> bool:
    if content_type is None:
        return False
    mime = content_type.split(b";", 1)[0].strip().lower()
    return mime == b"application/json" or (
        mime.startswith(b"application/") and mime.endswith(b"+json")
    )
