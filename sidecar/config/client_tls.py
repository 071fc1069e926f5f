"""Which client certificate rules an HTTPS listener has: the most specific
ClientTrafficPolicy that targets it (its listener over its Gateway; the oldest among
equals), with its CA bundle resolved and checked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from sidecar.config import resources as r
from sidecar.config.certs import ClientValidation


def client_validation(
    gw: r.Gateway, lst: r.Listener, policies: list[r.ClientTrafficPolicy],
    ca_bundle: Callable[[str, str, str], bytes | None], warnings: list[str],
) -> ClientValidation | Literal[False] | None:  # fmt: skip
    """The listener's rules (None: no client certificates). False: its CA bundle is
    missing or unusable, and the listener is not served — a listener that should check
    certificates never runs without them. `ca_bundle(kind, namespace, name)` reads one."""
    best: tuple[int, tuple[str, str, str]] | None = None
    policy = None
    for p in policies:
        if p.meta.namespace != gw.meta.namespace:
            continue
        for t in p.targets:
            if t.name != gw.meta.name or t.section_name not in (None, lst.name):
                continue
            rank = (0 if t.section_name else 1, _age(p))
            if best is None or rank < best:
                best, policy = rank, p
    if policy is None or not policy.ca_refs:
        return None
    ns = policy.meta.namespace
    where = f"Gateway {ns}/{gw.meta.name} listener {lst.name}: ClientTrafficPolicy "
    where += f"{ns}/{policy.meta.name}"
    bundle = b""
    for kind, name in policy.ca_refs:
        pem = ca_bundle(kind, ns, name)
        if pem is None:
            warnings.append(f"{where}: {kind} {ns}/{name} with ca.crt not found; "
                            "listener not served")  # fmt: skip
            return False
        bundle += pem.strip() + b"\n"
    found = ClientValidation(
        ca_pem=bundle, optional=policy.optional,
        xfcc=policy.xfcc_details if policy.xfcc_set else None,
    )  # fmt: skip
    if (why := found.check()) is not None:
        warnings.append(f"{where}: the CA bundle {why}; listener not served")
        return False
    return found


def _age(p: r.ClientTrafficPolicy) -> tuple[str, str, str]:
    return (p.meta.creation_timestamp, p.meta.namespace, p.meta.name)
