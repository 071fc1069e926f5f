"""Request paths normalized once, before routing and authorization (RFC 3986 §6.2.2).

Routing, AuthorizationPolicy and the upstream must all see the same path; otherwise a
policy on `/admin` is walked around with `/api/%2e%2e/admin`, `/api/..\\admin` or
`//admin`, which many backends resolve to `/admin`. So the path is normalized here and
the normalized path is what every later stage sees and what is forwarded, the way Envoy's
`normalize_path` works:

- percent-encoded unreserved characters are decoded (`%41` is `A`, `%2e` is `.`), other
  escapes keep their meaning with upper-case hex; a `%` not followed by two hex digits is
  refused (400);
- `\\` is read as `/`, as browsers and many servers read it;
- `%2F` and `%5C` (an encoded slash or backslash) are refused by default (400): a backend
  that decodes them sees another path than the one routed. `keep` forwards them as they
  are (the backend must not decode them), `decode` makes them `/` before the rest;
- dot segments are removed (§5.2.4), and with `merge_slashes` (the default) empty segments
  too, so `//admin` is `/admin`.

The common path (none of `%`, `\\`, `/.`, `//`) costs four substring tests.
"""

from __future__ import annotations

import re

from sidecar.errors import ProtocolError

_ESCAPE = re.compile(r"%(..)?", re.DOTALL)
_HEX = frozenset("0123456789abcdefABCDEF")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def normalize_path(
    path: str, *, merge_slashes: bool = True, escaped_slashes: str = "reject"
) -> str:
    """`path` (an absolute path, no query) normalized as the module docstring says;
    ProtocolError (400) for what `escaped_slashes` ("reject", "keep" or "decode") refuses."""
    if "%" in path:
        path = _decode_unreserved(path, escaped_slashes)
    if "\\" in path:
        path = path.replace("\\", "/")
    if "/." in path or "//" in path:
        path = remove_dot_segments(path, merge_slashes=merge_slashes)
    return path


def _decode_unreserved(path: str, escaped_slashes: str) -> str:
    def one(m: re.Match[str]) -> str:
        hex2 = m.group(1)
        if hex2 is None or hex2[0] not in _HEX or hex2[1] not in _HEX:
            raise ProtocolError("invalid percent-encoding in the path")
        char = chr(int(hex2, 16))
        if char in _UNRESERVED:
            return char
        if char in "/\\":
            if escaped_slashes == "reject":
                raise ProtocolError("encoded slash or backslash in the path")
            if escaped_slashes == "decode":
                return char
        return "%" + hex2.upper()

    return _ESCAPE.sub(one, path)


def remove_dot_segments(path: str, *, merge_slashes: bool = True) -> str:
    """RFC 3986 §5.2.4 on an absolute path; with `merge_slashes`, empty segments go too
    (a trailing slash stays)."""
    segments = path.split("/")[1:]
    out: list[str] = []
    last = len(segments) - 1
    for i, seg in enumerate(segments):
        if seg == "..":
            if out:
                out.pop()
        elif seg == "." or (seg == "" and merge_slashes and i != last):
            continue
        else:
            out.append(seg)
    if segments[-1] in (".", ".."):
        out.append("")  # "/a/b/.." is "/a/": the result names a directory
    return "/" + "/".join(out)
