"""RequestValidation (weft.dev/v1alpha1): what requests of the route rules that use it
through an ExtensionRef filter must look like. The schema is checked here, in its own
dialect, so a route never starts with a schema that cannot be evaluated."""

from __future__ import annotations

import json
import re
from typing import Any

from sidecar.config.reader import Reader
from sidecar.config.resources import Meta, RequestValidation

DEFAULT_SCHEMA_BODY = 1 << 20  # the body limit of a schema-checked route without its own
_METHOD_RE = re.compile(r"^[A-Z][A-Z-]{0,31}$")
_FIELD_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")


def parse_request_validation(top: Reader, meta: Meta) -> RequestValidation:
    spec = top.req_obj("spec")
    methods = frozenset(spec.str_list("methods", pattern=_METHOD_RE))
    required = tuple(
        h.lower().encode() for h in spec.str_list("requiredHeaders", pattern=_FIELD_RE)
    )
    max_body = spec.integer("maxBodyBytes", 0, lo=0, hi=1 << 40)
    schema_text = ""
    if spec.has("jsonSchema"):
        schema = spec.raw("jsonSchema")
        if not isinstance(schema, dict | bool):
            spec.fail("jsonSchema", "must be a JSON Schema (a mapping)")
        if (remote := _remote_ref(schema)) is not None:
            spec.fail("jsonSchema", f"$ref {remote!r}: only references within the schema "
                      "(#/...) are followed")  # fmt: skip
        from jsonschema.exceptions import SchemaError

        from sidecar.filters.validate import compile_schema

        try:
            compile_schema(schema)
        except SchemaError as exc:
            where = "/".join(str(p) for p in exc.path) or "(root)"
            spec.fail("jsonSchema", f"is not a valid schema at {where}: {exc.message}")
        schema_text = json.dumps(schema, sort_keys=True)
        max_body = max_body or DEFAULT_SCHEMA_BODY
    spec.finish()
    if not (methods or required or max_body or schema_text):
        top.fail("spec", "checks nothing (give methods, requiredHeaders, maxBodyBytes or "
                 "jsonSchema)")  # fmt: skip
    return RequestValidation(meta=meta, methods=methods, required_headers=required,
                             max_body_bytes=max_body, json_schema=schema_text)  # fmt: skip


def _remote_ref(node: Any) -> str | None:
    """The first `$ref` that leaves the schema, if any."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str) and not ref.startswith("#"):
                return ref
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None
