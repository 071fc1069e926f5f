"""Authorization (SecurityPolicy.authorization): rules on who the client is — its
address (clientCIDRs), the JWT it authenticated with (provider, scopes, claims) and
request headers; the first rule whose every part matches decides, else the default
action. A denied request is answered 403 here.

The filter runs after authentication, so a JWT principal sees the claims the JWT filter
verified (a request with no verified token matches no JWT principal). The client is the
connection's peer; X-Forwarded-For is believed only behind configured trusted hops.
"""

from __future__ import annotations

from typing import Any

from sidecar.config.resources import Authorization, AuthzRule, ClaimMatch, JwtPrincipal
from sidecar.filters.chain import Exchange, LocalReply, address

DENIED = LocalReply(403, b"forbidden\n", (), "authz_denied")


class AuthorizationFilter:
    __slots__ = ("authorization", "needs_address")

    def __init__(self, authorization: Authorization) -> None:
        self.authorization = authorization
        self.needs_address = any(r.cidrs for r in authorization.rules)

    def allows(self, x: Exchange) -> bool:
        addr = address(x.client) if self.needs_address else None
        for rule in self.authorization.rules:
            if rule.cidrs and (addr is None or not any(addr in net for net in rule.cidrs)):
                continue
            if rule.jwt is not None and not _jwt_matches(rule.jwt, x.jwt):
                continue
            if rule.headers and not _headers_match(rule, x):
                continue
            return rule.action == "Allow"
        return self.authorization.default_action == "Allow"

    def describe(self) -> str:
        a = self.authorization
        return f"authorization: {len(a.rules)} rule(s), default {a.default_action}"

    def on_request(self, x: Exchange) -> LocalReply | None:
        return None if self.allows(x) else DENIED


def _jwt_matches(p: JwtPrincipal, verified: tuple[str, dict[str, Any]] | None) -> bool:
    if verified is None or verified[0] != p.provider:
        return False
    claims = verified[1]
    if p.scopes and not p.scopes <= scopes_of(claims):
        return False
    return all(_claim_matches(c, claims) for c in p.claims)


def scopes_of(claims: dict[str, Any]) -> frozenset[str]:
    """The token's scopes: `scope` as a space-separated string (RFC 8693), or `scp` as
    a list or a string."""
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            return frozenset(value.split())
        if isinstance(value, list):
            return frozenset(v for v in value if isinstance(v, str))
    return frozenset()


def _claim_matches(c: ClaimMatch, claims: dict[str, Any]) -> bool:
    value: Any = claims
    for step in c.path:
        if not isinstance(value, dict):
            return False
        value = value.get(step)
    if c.array:
        return isinstance(value, list) and any(isinstance(v, str) and v in c.values for v in value)
    return _scalar(value) in c.values


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


def _headers_match(rule: AuthzRule, x: Exchange) -> bool:
    for name, values in rule.headers:
        found = x.header(name)
        if found is None or found.strip() not in values:
            return False
    return True
