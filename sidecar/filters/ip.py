"""Authorization on the client's address (SecurityPolicy.authorization with clientCIDRs):
the first rule whose CIDRs hold the client decides, else the default action; a denied
request is answered 403 here.

The client is the connection's peer. X-Forwarded-For is not believed: any client can
write it, so trusting it needs a configured number of trusted proxies in front.
"""

from __future__ import annotations

from sidecar.config.resources import IpAuthorization
from sidecar.filters.chain import Exchange, LocalReply, address

DENIED = LocalReply(403, b"forbidden: client address not allowed\n", (), "ip_denied")


class IpFilter:
    __slots__ = ("authorization",)

    def __init__(self, authorization: IpAuthorization) -> None:
        self.authorization = authorization

    def allows(self, client: str) -> bool:
        addr = address(client)
        if addr is None:  # no address to judge (a Unix socket)
            return False
        for rule in self.authorization.rules:
            if any(addr in net for net in rule.cidrs):
                return rule.action == "Allow"
        return self.authorization.default_action == "Allow"

    def describe(self) -> str:
        a = self.authorization
        return f"client addresses: {len(a.rules)} rule(s), default {a.default_action}"

    def on_request(self, x: Exchange) -> LocalReply | None:
        return None if self.allows(x.client) else DENIED
