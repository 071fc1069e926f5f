"""Authorization decisions: DENY wins, ALLOW lists, sources, operations, TCP and defaults."""

from __future__ import annotations

import pytest

from ca.spiffe import SpiffeId
from sidecar.authz import Operation, Policy, Source, decide

WEB = SpiffeId("weft.local", "shop", "web")
SHIPPING = SpiffeId("weft.local", "ops", "shipping")
ALLOW_WEB = Policy(
    name="shop/allow-web", namespace="shop", target="orders", action="ALLOW",
    sources=(Source(services=("web",)),),
    operations=(Operation(paths=("/orders/",), methods=("GET",)),),
)  # fmt: skip
DENY_OPS = Policy(
    name="shop/deny-ops", namespace="shop", target="orders", action="DENY",
    sources=(Source(namespaces=("ops",)),),
)  # fmt: skip


def _decide(
    peer: SpiffeId | None, method: str | None = "GET", path: str | None = "/orders/1", **kw: object
) -> tuple[bool, str]:
    d = decide([ALLOW_WEB, DENY_OPS], namespace="shop", service="orders", peer=peer,
               method=method, path=path, **kw)  # type: ignore[arg-type]  # fmt: skip
    return d.allowed, d.reason


def test_allow_list_with_operations() -> None:
    assert _decide(WEB) == (True, "allowed by shop/allow-web")
    assert _decide(WEB, method="POST") == (False, "no ALLOW policy of shop/orders matches")
    assert _decide(WEB, path="/admin") == (False, "no ALLOW policy of shop/orders matches")
    assert _decide(None)[0] is False  # no verified caller


def test_deny_wins_and_namespaces_and_qualified_services() -> None:
    assert _decide(SHIPPING) == (False, "denied by shop/deny-ops")
    qualified = Policy(name="shop/q", namespace="shop", target="orders", action="ALLOW",
                       sources=(Source(services=("ops/shipping",)),))  # fmt: skip
    allowed = decide([qualified], namespace="shop", service="orders", peer=SHIPPING,
                     method="GET", path="/")  # fmt: skip
    assert allowed.allowed
    by_id = Policy(name="shop/id", namespace="shop", target="orders", action="ALLOW",
                   sources=(Source(identities=(WEB.uri,)),))  # fmt: skip
    assert decide([by_id], namespace="shop", service="orders", peer=WEB).allowed


def test_tcp_cannot_satisfy_http_rules_either_way() -> None:
    # ALLOW needing a path does not allow a TCP call; DENY needing a path does deny it.
    assert _decide(WEB, method=None, path=None)[0] is False
    deny_path = Policy(name="shop/d", namespace="shop", target="orders", action="DENY",
                       operations=(Operation(paths=("/x",)),))  # fmt: skip
    got = decide([deny_path], namespace="shop", service="orders", peer=WEB)
    assert (got.allowed, got.reason) == (False, "denied by shop/d")


@pytest.mark.parametrize(("default", "want"), [(True, "default allow"), (False, "default deny")])
def test_services_without_allow_policies_follow_the_default(default: bool, want: str) -> None:
    got = decide([], namespace="shop", service="cart", peer=WEB, method="GET", path="/",
                 default_allow=default)  # fmt: skip
    assert (got.allowed, got.reason) == (default, want)
