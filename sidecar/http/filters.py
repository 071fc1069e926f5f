"""Pure HTTPRoute filter logic: header modification, path rewriting and redirect targets."""

from __future__ import annotations

import re

from sidecar.config.model import RedirectAction, RewriteAction

Headers = list[tuple[bytes, bytes]]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def split_target(target: str) -> tuple[str, str]:
    """Split a request target into (path, query) where query keeps no leading '?'."""
    path, sep, query = target.partition("?")
    return path, query if sep else ""


def rewrite_path(
    path: str,
    matched_prefix: str | None,
    path_type: str | None,
    value: str,
    regex: re.Pattern[str] | None = None,
) -> str:
    """The path after a URLRewrite/RequestRedirect path modifier (Gateway API semantics;
    ReplaceRegexMatch as Envoy Gateway's: the first match replaced, `\\1` its groups)."""
    if path_type == "ReplaceFullPath":
        return value
    if path_type == "ReplaceRegexMatch" and regex is not None:
        try:
            return regex.sub(value, path, count=1) or "/"
        except (re.error, IndexError):  # a group the pattern does not have
            return path
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
    new_path = rewrite_path(
        path, matched_prefix, rewrite.path_type, rewrite.path_value, rewrite.path_regex
    )
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
    new_path = rewrite_path(
        path, matched_prefix, redirect.path_type, redirect.path_value, redirect.path_regex
    )
    authority = out_host if port == _DEFAULT_PORTS.get(out_scheme) else f"{out_host}:{port}"
    location = f"{out_scheme}://{authority}{new_path}"
    return f"{location}?{query}" if query else location
