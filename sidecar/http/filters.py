"""Pure HTTPRoute filter logic: header modification, path rewriting and redirect targets."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.config.model import RedirectAction, RewriteAction
from sidecar.observe.tracecontext import REPLACED
from sidecar.protocol.wire import HOP_BY_HOP, PROTECTED

Headers = list[tuple[bytes, bytes]]

_DEFAULT_PORTS = {"http": 80, "https": 443}


# Fields a hop writes itself (framing, Host, the request id, forwarding, tracing): no
# filter sets them, and edits that touch one leave the raw fast path.
HOP_WRITTEN = HOP_BY_HOP | PROTECTED | frozenset(REPLACED)


def field_key(name: bytes) -> bytes:
    """A field name as edits compare it: case-insensitive, and `_` read as `-`, as CGI,
    WSGI and many frameworks read it — so dropping `X-User` also drops the `X_User` a
    client wrote to pass for it."""
    return name.lower().replace(b"_", b"-")


def dropped(name: bytes, drop: frozenset[bytes]) -> bool:
    """Is a field of this name (as received) in `drop` (names as field_key makes them)?"""
    key = name.lower()
    return key in drop or (b"_" in key and key.replace(b"_", b"-") in drop)


@dataclass(frozen=True, slots=True)
class HeaderOps:
    """Field edits: a compiled RequestHeaderModifier / ResponseHeaderModifier, or what a
    filter adds (its verified identity fields, with the client's copies dropped)."""

    # names removed before set/add (remove and set), as field_key makes them: whoever
    # builds one passes them so (a filter's are fixed when it is configured)
    drop: frozenset[bytes]
    append: tuple[tuple[bytes, bytes], ...]  # set values, then add values, in order

    @classmethod
    def build(
        cls,
        *,
        set_: tuple[tuple[str, str], ...] = (),
        add: tuple[tuple[str, str], ...] = (),
        remove: tuple[str, ...] = (),
    ) -> HeaderOps:
        drop = {field_key(n.encode()) for n in (*remove, *(n for n, _ in set_))}
        append = tuple((n.encode(), v.encode()) for n, v in (*set_, *add))
        return cls(drop=frozenset(drop), append=append)

    def touches(self, names: frozenset[bytes]) -> bool:
        """Does it drop or add one of these (lower-case) fields?"""
        if not self.drop.isdisjoint(names):
            return True
        for name, _ in self.append:  # noqa: SIM110 (a loop: no generator per request)
            if name.lower() in names:
                return True
        return False

    def apply(self, headers: Headers) -> Headers:
        drop = self.drop
        if not drop:
            out = list(headers)
        else:  # dropped(), inlined: this runs per field of every filtered request
            out = []
            for h in headers:
                key = h[0].lower()
                if key not in drop and (b"_" not in key or key.replace(b"_", b"-") not in drop):
                    out.append(h)
        out.extend(self.append)
        return out


def split_target(target: str) -> tuple[str, str]:
    """Split a request target into (path, query) where query keeps no leading '?'."""
    path, sep, query = target.partition("?")
    return path, query if sep else ""


def rewrite_path(path: str, matched_prefix: str | None, path_type: str | None, value: str) -> str:
    """The path after a URLRewrite/RequestRedirect path modifier (Gateway API semantics)."""
    if path_type == "ReplaceFullPath":
        return value
    if path_type == "ReplacePrefixMatch" and matched_prefix is not None:
        prefix = matched_prefix.rstrip("/")
        rest = path[len(prefix) :]
        base = value.rstrip("/")
        if not rest or rest == "/":
            return (base + rest) or "/"
        return base + rest
    return path


def rewritten_target(target: str, rewrite: RewriteAction, matched_prefix: str | None) -> str:
    path, query = split_target(target)
    new_path = rewrite_path(path, matched_prefix, rewrite.path_type, rewrite.path_value)
    return f"{new_path}?{query}" if query else new_path


def redirect_location(
    redirect: RedirectAction,
    *,
    scheme: str,
    host: str,
    listener_port: int,
    target: str,
    matched_prefix: str | None,
) -> str:
    """The Location for a RequestRedirect, per the Gateway API rules for scheme and port."""
    out_scheme = redirect.scheme or scheme
    if redirect.port is not None:
        port = redirect.port
    elif redirect.scheme is not None:
        port = _DEFAULT_PORTS[out_scheme]
    else:
        port = listener_port
    out_host = redirect.hostname or host
    path, query = split_target(target)
    new_path = rewrite_path(path, matched_prefix, redirect.path_type, redirect.path_value)
    authority = out_host if port == _DEFAULT_PORTS.get(out_scheme) else f"{out_host}:{port}"
    location = f"{out_scheme}://{authority}{new_path}"
    return f"{location}?{query}" if query else location
