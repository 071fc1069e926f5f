"""Aggregation (weft.dev/v1alpha1): a route rule answered by several upstream calls merged
into one JSON document (filters/aggregate.py runs it).

    spec:
      pathTemplate: /profile/{id}
      timeout: 5s                          # the whole answer (default 10s)
      forwardHeaders: [authorization]      # request fields every call carries
      parts:
      - name: user
        backendRef: {name: users, port: 80}
        path: /users/${path.id}
        timeout: 1s                        # this call (default 5s)
      - name: orders
        backendRef: {name: orders, port: 80}
        path: /orders?customer=${part.user.customerId}   # after `user`
        optional: true                     # null with an error note, not a failed answer
        maxBytes: 1048576
"""

from __future__ import annotations

import re

from sidecar.config.headerops import HOP_WRITTEN, field_key
from sidecar.config.parse_policy import _duration
from sidecar.config.parse_routes import backend_object_ref
from sidecar.config.parse_transform import path_template
from sidecar.config.reader import Reader
from sidecar.config.resources import Aggregation, Meta
from sidecar.filters.aggregate import AggregateSpec, Part
from sidecar.filters.transform import Template, TemplateError

_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")
_FIELD = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")
_METHODS = ("GET", "HEAD", "DELETE", "OPTIONS")  # methods without a request body


def parse_aggregation(top: Reader, meta: Meta) -> Aggregation:
    spec = top.req_obj("spec")
    pattern: re.Pattern[str] | None = None
    params: tuple[str, ...] = ()
    if spec.has("pathTemplate"):
        pattern, params = path_template(spec, spec.text("pathTemplate", max_len=1024))
    readers = list(spec.objs("parts", max_items=32))
    if not readers:
        spec.fail("parts", "must have at least one part")
    names = tuple(pr.text("name", pattern=_PART) for pr in readers)
    if len(set(names)) != len(names):
        spec.fail("parts", "part names must be unique")
    parts, refs = [], []
    for pr in readers:
        text = pr.text("path", max_len=8192)
        if not text.startswith("/"):
            pr.fail("path", "must start with /")
        try:
            path = Template.parse(text, params, names)
        except TemplateError as exc:
            pr.fail("path", str(exc))
        after = tuple(dict.fromkeys(re.split(r"[.\[]", n, maxsplit=1)[0]
                                    for n in path.refers_to("part")))  # fmt: skip
        name = pr.text("name")
        if name in after:
            pr.fail("path", "refers to its own part")
        refs.append(backend_object_ref(pr.req_obj("backendRef"), finish=True))
        parts.append(Part(
            name=name, cluster=None, authority="", path=path,
            method=pr.text("method", "GET", choices=_METHODS),
            timeout_s=_duration(pr, "timeout") or 5.0, optional=pr.flag("optional", False),
            max_bytes=pr.integer("maxBytes", 1 << 20, lo=1, hi=64 << 20), after=after,
        ))  # fmt: skip
        pr.finish()
    _acyclic(spec, {p.name: p.after for p in parts})
    forward = tuple(n.lower().encode() for n in spec.str_list("forwardHeaders", pattern=_FIELD))
    for n in forward:
        if field_key(n) in HOP_WRITTEN:
            spec.fail("forwardHeaders", f"{n.decode()} is written by the proxy itself")
    out = AggregateSpec(parts=tuple(parts), path_template=pattern,
                        timeout_s=_duration(spec, "timeout") or 10.0,
                        forward_headers=forward)  # fmt: skip
    spec.finish()
    return Aggregation(meta=meta, spec=out, refs=tuple(refs))


def _acyclic(r: Reader, after: dict[str, tuple[str, ...]]) -> None:
    state: dict[str, int] = {}  # 1: being visited, 2: done

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            r.fail("parts", "parts wait for each other: " + " -> ".join([*trail, name]))
        state[name] = 1
        for dep in after[name]:
            visit(dep, [*trail, name])
        state[name] = 2

    for name in after:
        visit(name, [])
