"""Header edits: a compiled Request/ResponseHeaderModifier, or the fields a filter adds.

Configuration data with the one operation the data path runs on it (`apply`); a leaf of
the configuration model, which the route actions carry.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.observe.tracecontext import REPLACED
from sidecar.protocol.wire import HOP_BY_HOP, PROTECTED

Headers = list[tuple[bytes, bytes]]


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
