"""CORS at the edge (Gateway API's HTTPRoute `CORS` filter; Envoy Gateway's
`SecurityPolicy.cors` compiles to the same policy).

A preflight (OPTIONS with Origin and Access-Control-Request-Method) is answered here and
never reaches the backend: 204 with the allowed origin echoed, methods, headers, exposed
headers, max age and credentials when the origin, method and headers are allowed, else
403 without any Access-Control-Allow-* field (the browser then refuses the call). An actual
request is forwarded either way — the browser, not the proxy, withholds a disallowed
answer — and its response gets the fields for an allowed origin; the filter owns CORS on
its routes, so the backend's own Access-Control-Allow-* fields are replaced. Every answer
says `Vary: Origin`, since it depends on it.
"""

from __future__ import annotations

import re

from sidecar.config.headerops import HeaderOps
from sidecar.config.resources import CorsPolicy
from sidecar.filters.chain import Exchange, LocalReply

_OWNED = frozenset(
    {b"access-control-allow-origin", b"access-control-allow-credentials",
     b"access-control-expose-headers", b"access-control-allow-methods",
     b"access-control-allow-headers", b"access-control-max-age"}
)  # fmt: skip


def origin_pattern(origins: tuple[str, ...]) -> re.Pattern[str]:
    """One regex for the allowed origins: `*` any origin, `*.` any number of labels."""
    parts = []
    for o in origins:
        if o == "*":
            parts.append(r"[a-z][a-z0-9+.-]*://[a-z0-9.\[\]:-]+")  # scheme://host[:port]
        else:
            parts.append(re.escape(o.lower()).replace(r"\*", r"[a-z0-9-]+(?:\.[a-z0-9-]+)*"))
    return re.compile("|".join(f"(?:{p})" for p in parts) or "(?!)")


class CorsFilter:
    __slots__ = ("allowed", "headers", "policy", "preflight_fields")

    def __init__(self, policy: CorsPolicy) -> None:
        self.policy = policy
        self.allowed = origin_pattern(policy.origins)
        self.headers = frozenset(h.lower() for h in policy.headers)
        fields = [(b"access-control-max-age", str(policy.max_age_s).encode())]
        if policy.expose:
            fields.append((b"access-control-expose-headers", ", ".join(policy.expose).encode()))
        if policy.credentials:
            fields.append((b"access-control-allow-credentials", b"true"))
        self.preflight_fields = tuple(fields)

    def describe(self) -> str:
        return f"cors: origins {', '.join(self.policy.origins)}"

    def on_request(self, x: Exchange) -> LocalReply | None:
        origin = x.header(b"origin")
        allowed = origin is not None and self.allowed.fullmatch(origin.decode("latin-1").lower())
        asked = x.header(b"access-control-request-method")
        if x.method == "OPTIONS" and origin is not None and asked is not None:
            return self._preflight(origin, asked, x.header(b"access-control-request-headers"),
                                   bool(allowed))  # fmt: skip
        append = [(b"vary", b"origin")]
        if allowed:
            assert origin is not None
            append.append((b"access-control-allow-origin", origin))
            append.extend(f for f in self.preflight_fields if f[0] != b"access-control-max-age")
        x.response_ops.append(HeaderOps(drop=_OWNED, append=tuple(append)))
        return None

    def _preflight(
        self, origin: bytes, method: bytes, headers: bytes | None, allowed: bool
    ) -> LocalReply:
        p = self.policy
        vary = ((b"vary", b"origin"),)
        if not allowed:
            return LocalReply(403, b"CORS: origin not allowed\n", vary, "cors_origin_refused")
        wanted = method.decode("latin-1").strip()
        if "*" not in p.methods and wanted not in p.methods:
            return LocalReply(403, b"CORS: method not allowed\n", vary, "cors_method_refused")
        asked = [h.strip().lower() for h in (headers or b"").decode("latin-1").split(",")]
        asked = [h for h in asked if h]
        if "*" not in self.headers and any(h not in self.headers for h in asked):
            return LocalReply(403, b"CORS: header not allowed\n", vary, "cors_header_refused")
        methods = wanted if "*" in p.methods else ", ".join(p.methods)
        fields = [
            *vary, (b"access-control-allow-origin", origin),
            (b"access-control-allow-methods", methods.encode()),
        ]  # fmt: skip
        allow_headers = ", ".join(asked) if "*" in p.headers else ", ".join(p.headers)
        if allow_headers:
            fields.append((b"access-control-allow-headers", allow_headers.encode()))
        fields.extend(self.preflight_fields)
        return LocalReply(204, b"", tuple(fields), "cors_preflight")
