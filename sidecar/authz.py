"""Identity-based authorization (pure): which callers may reach a service, and where.

`AuthorizationPolicy` (weft.dev/v1alpha1) targets one Service and ALLOWs or DENYs callers
named by SPIFFE ID, by service (in the target's namespace unless written `ns/name`) or by
namespace, optionally narrowed to path prefixes and methods. DENY wins over ALLOW; when a
service has ALLOW policies, only what one of them allows passes; with none, the mesh-wide
default decides. Calls without HTTP (TCP) cannot match path or method rules: an ALLOW rule
that needs them does not allow, a DENY rule that needs them denies (the safe side).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ca.spiffe import SpiffeId


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    identities: tuple[str, ...] = ()
    services: tuple[str, ...] = ()  # "name" (target's namespace) or "namespace/name"
    namespaces: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation:
    paths: tuple[str, ...] = ()  # prefixes; empty: any
    methods: tuple[str, ...] = ()  # empty: any


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    name: str  # "namespace/name", for reasons
    namespace: str  # of the target
    target: str  # Service name
    action: str  # ALLOW | DENY
    sources: tuple[Source, ...] = ()  # empty: any caller
    operations: tuple[Operation, ...] = ()  # empty: anything


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str


def decide(
    policies: Iterable[Policy],
    *,
    namespace: str,
    service: str,
    peer: SpiffeId | None,
    method: str | None = None,
    path: str | None = None,
    default_allow: bool = True,
) -> Decision:
    """May `peer` call `method path` on namespace/service (method/path None: TCP)?"""
    mine = [p for p in policies if p.namespace == namespace and p.target == service]
    for p in mine:
        if p.action == "DENY" and _matches(p, peer, method, path, deny=True):
            return Decision(False, f"denied by {p.name}")
    allows = [p for p in mine if p.action == "ALLOW"]
    if allows:
        for p in allows:
            if _matches(p, peer, method, path, deny=False):
                return Decision(True, f"allowed by {p.name}")
        return Decision(False, f"no ALLOW policy of {namespace}/{service} matches")
    if default_allow:
        return Decision(True, "default allow")
    return Decision(False, "default deny")


def _matches(
    p: Policy, peer: SpiffeId | None, method: str | None, path: str | None, *, deny: bool
) -> bool:
    if p.sources and not any(_source(s, p.namespace, peer) for s in p.sources):
        return False
    if not p.operations:
        return True
    if method is None or path is None:  # TCP: HTTP rules cannot be checked
        return deny
    return any(_operation(o, method, path) for o in p.operations)


def _source(s: Source, target_ns: str, peer: SpiffeId | None) -> bool:
    if peer is None:
        return False
    if peer.uri in s.identities:
        return True
    if peer.namespace in s.namespaces:
        return True
    for svc in s.services:
        ns, _, name = svc.rpartition("/")
        if peer.service == name and peer.namespace == (ns or target_ns):
            return True
    return False


def _operation(o: Operation, method: str, path: str) -> bool:
    if o.methods and method not in o.methods:
        return False
    return not o.paths or any(path.startswith(prefix) for prefix in o.paths)


def denials(
    policies: Iterable[Policy], *, namespace: str, service: str, peer: SpiffeId
) -> list[Policy]:
    """The DENY policies of namespace/service that refuse `peer` some call (all of them,
    or the paths and methods they name): whatever an ALLOW says, those calls stay refused."""
    return [
        p for p in policies
        if p.namespace == namespace and p.target == service and p.action == "DENY"
        and (not p.sources or any(_source(s, p.namespace, peer) for s in p.sources))
    ]  # fmt: skip
