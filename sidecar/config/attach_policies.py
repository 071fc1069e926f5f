"""The filters policies put on route rules (Gateway API policy attachment): which
SecurityPolicy and which route-level BackendTrafficPolicy apply to a rule reached through a
listener, and the filters they compile to, made once per policy per snapshot."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from sidecar.config import resources as r
from sidecar.config.model import RouteAction
from sidecar.filters.apikey import ApiKeyFilter, KeySources, digest
from sidecar.filters.authorization import AuthorizationFilter
from sidecar.filters.cache import CacheFilter
from sidecar.filters.chain import Filter
from sidecar.filters.compress import CompressFilter
from sidecar.filters.cors import CorsFilter
from sidecar.filters.decompress import DecompressFilter
from sidecar.filters.jwks import RemoteJwks
from sidecar.filters.ratelimit import RateLimitFilter
from sidecar.filters.transform import TransformFilter

if TYPE_CHECKING:  # loaded when a policy uses them: a plain gateway stays small
    from sidecar.filters.basic import BasicAuthFilter
    from sidecar.filters.ext_auth import ExtAuthFilter
    from sidecar.filters.global_ratelimit import GlobalRateLimitFilter


class PolicyFilters:
    """One snapshot's compilation of policies into filters (`warnings` is the
    compiler's list, where a missing Secret is reported)."""

    def __init__(
        self, security: list[r.SecurityPolicy], rate_limits: list[r.BackendTrafficPolicy],
        secrets: dict[tuple[str, str], r.Secret], warnings: list[str],
        resolve: Callable[[r.BackendObjectRef, str], tuple[str | None, str]],
    ) -> None:  # fmt: skip
        """`resolve(ref, namespace)`: a backend's cluster name, or None and why."""
        self.security = security
        self.rate_limits = rate_limits
        self.secrets = secrets
        self.warnings = warnings
        self.resolve = resolve
        self.limiters: dict[str, RateLimitFilter] = {}  # by policy: their buckets' owners
        self.global_limiters: dict[str, GlobalRateLimitFilter] = {}  # by policy (Redis)
        self.made: dict[str, tuple[CorsFilter | None, list[Filter]]] = {}  # by policy
        self.compressors: dict[str, CompressFilter] = {}  # by policy
        self.caches: dict[str, CacheFilter] = {}  # by policy: their stores' owners
        self.remotes: list[RemoteJwks] = []  # JWKS endpoints of the JWT filters made

    def secured(
        self, action: RouteAction, route: r.HTTPRoute, rule: str | None, gateway: r.Gateway,
        listener: str,
    ) -> RouteAction:  # fmt: skip
        """The rule's action with the filters of the SecurityPolicy that applies to it on
        this listener: the most specific target wins whole (route rule, route, listener,
        Gateway), as Gateway API policy attachment and Envoy Gateway have it."""
        where = (route, rule, gateway, listener)
        policy = most_specific(self.security, *where)
        limit = most_specific(self.rate_limits, *where)
        if policy is None and limit is None:
            return action
        cors, checks = self._security(policy) if policy is not None else (None, [])
        filters: list[Filter] = []
        if cors is not None and not any(isinstance(f, CorsFilter) for f in action.filters):
            filters.append(cors)  # a route's own CORS filter wins
        filters.extend(f for f in action.filters if not isinstance(f, TransformFilter))
        filters.extend(checks)
        # Transforms after the checks: their templates see what authentication verified
        filters.extend(f for f in action.filters if isinstance(f, TransformFilter))
        if limit is not None:
            if limit.rate_limit:
                filters.append(self._limiter(limit))
            if limit.max_inflated is not None:  # bodies are decoded before any body check
                filters.append(DecompressFilter(limit.max_inflated))
            if limit.cache is not None:  # after the checks; its stage after compression's
                filters.append(self._cache(limit))
            if limit.compression is not None:
                filters.append(self._compressor(limit))
        return dataclasses.replace(action, filters=tuple(filters))

    def _security(self, policy: r.SecurityPolicy) -> tuple[CorsFilter | None, list[Filter]]:
        """A SecurityPolicy's filters — its CORS, then its checks in Envoy Gateway's order
        (authentication: JWT, basic auth, API keys; then the external authorization
        service, which sees only authenticated requests; then authorization, which may
        look at the verified claims) — made once per policy, so every route it applies to shares
        them (and their caches of verified credentials)."""
        name = _nn(policy.meta)
        found = self.made.get(name)
        if found is None:
            checks: list[Filter] = []
            if policy.jwt is not None:
                from sidecar.filters.jwt_auth import JwtFilter

                checks.append(JwtFilter(policy.jwt.providers, name))
                self.remotes += [p.remote for p in policy.jwt.providers if p.remote]
            if policy.basic is not None:
                checks.append(self._basic(policy))
            if policy.api_keys is not None:
                checks.append(self._api_keys(policy))
            if policy.ext_auth is not None:
                checks.append(self._ext_auth(policy))
            if policy.authorization is not None:
                checks.append(AuthorizationFilter(policy.authorization))
            cors = CorsFilter(policy.cors) if policy.cors is not None else None
            found = self.made[name] = (cors, checks)
        return found

    def _basic(self, policy: r.SecurityPolicy) -> BasicAuthFilter:
        auth = policy.basic
        assert auth is not None
        forward = auth.forward_username.encode() if auth.forward_username else None
        where = f"SecurityPolicy {_nn(policy.meta)}: basicAuth"
        return self.basic_auth(policy.meta.namespace, auth.secret, _nn(policy.meta), forward,
                               where)  # fmt: skip

    def basic_auth(
        self, namespace: str, secret_name: str, realm: str, forward: bytes | None = None,
        where: str = "",
    ) -> BasicAuthFilter:  # fmt: skip
        """A basic-auth filter whose users are the Secret's `.htpasswd` (a missing Secret or
        entry leaves users out, with a warning: what it guards stays closed)."""
        from sidecar.filters.basic import BasicAuthFilter, parse_htpasswd

        where = where or f"{realm}: proxyAuth"
        secret = self.secrets.get((namespace, secret_name))
        text = dict(secret.data).get(".htpasswd") if secret is not None else None
        users: dict[str, bytes] = {}
        if text is None:
            self.warnings.append(f"{where} Secret {namespace}/{secret_name} not found, not "
                                 "Opaque, or without .htpasswd; nobody is let in")  # fmt: skip
        else:
            users, skipped = parse_htpasswd(text)
            if skipped:
                self.warnings.append(f"{where}: users {', '.join(skipped)} have a hash kind "
                                     "other than {SHA} or bcrypt, or a name with control "
                                     "characters; they are not let in")  # fmt: skip
        return BasicAuthFilter(users, realm, forward)

    def _api_keys(self, policy: r.SecurityPolicy) -> ApiKeyFilter:
        """The policy's key filter, its keys read from its Secrets (digests only). A Secret
        that is missing leaves its clients out, with a warning: the routes stay closed."""
        auth = policy.api_keys
        assert auth is not None
        clients: dict[bytes, str] = {}
        for name in auth.secrets:
            secret = self.secrets.get((policy.meta.namespace, name))
            if secret is None:
                self.warnings.append(
                    f"SecurityPolicy {_nn(policy.meta)}: apiKeyAuth Secret "
                    f"{policy.meta.namespace}/{name} not found (or not Opaque); its keys are "
                    "not accepted"
                )
                continue
            for client, key in secret.data:
                clients[digest(key.strip())] = client
        sources = KeySources(
            headers=tuple(h.encode() for h in auth.headers), params=auth.params,
            cookies=auth.cookies,
        )  # fmt: skip
        forward = auth.forward_client_id.encode() if auth.forward_client_id else None
        return ApiKeyFilter(clients, sources, forward, auth.sanitize)

    def _ext_auth(self, policy: r.SecurityPolicy) -> ExtAuthFilter:
        """The policy's external authorization; a backend that does not resolve leaves
        the filter refusing every request (or passing them, when it fails open)."""
        from sidecar.filters.ext_auth import ExtAuthFilter

        auth = policy.ext_auth
        assert auth is not None
        cluster, why = self.resolve(auth.backend, policy.meta.namespace)
        if cluster is None:
            self.warnings.append(f"SecurityPolicy {_nn(policy.meta)}: extAuth: {why}; "
                                 "its checks fail")  # fmt: skip
        return ExtAuthFilter(auth, cluster, _nn(policy.meta))

    def _cache(self, policy: r.BackendTrafficPolicy) -> CacheFilter:
        name = _nn(policy.meta)
        found = self.caches.get(name)
        if found is None:
            assert policy.cache is not None
            found = self.caches[name] = CacheFilter(name, policy.cache)
        return found

    def _compressor(self, policy: r.BackendTrafficPolicy) -> CompressFilter:
        name = _nn(policy.meta)
        found = self.compressors.get(name)
        if found is None:
            assert policy.compression is not None
            found = self.compressors[name] = CompressFilter(policy.compression)
        return found

    def _limiter(self, policy: r.BackendTrafficPolicy) -> Filter:
        """One filter per policy, shared by every route it applies to: its buckets (or
        its Redis windows) count all of them together."""
        name = _nn(policy.meta)
        assert policy.rate_limit is not None
        if policy.rate_limit_global:
            from sidecar.filters.global_ratelimit import GlobalRateLimitFilter

            shared = self.global_limiters.get(name)
            if shared is None:
                shared = self.global_limiters[name] = GlobalRateLimitFilter(name, policy.rate_limit)
            return shared
        found = self.limiters.get(name)
        if found is None:
            found = self.limiters[name] = RateLimitFilter(name, policy.rate_limit)
        return found


def most_specific(
    policies: list[_P], route: r.HTTPRoute, rule: str | None, gateway: r.Gateway, listener: str
) -> _P | None:
    """The policy for a route rule reached through a Gateway listener: the one whose
    target is most specific (rule > route > listener > Gateway; the oldest among equals),
    or None."""
    best, found = -1, None
    for p in policies:
        rank = _rank(p, route, rule, gateway, listener)
        if rank > best or (rank == best >= 0 and found and _age(p) < _age(found)):
            best, found = rank, p
    return found


_P = TypeVar("_P", r.SecurityPolicy, r.BackendTrafficPolicy)


def _rank(
    p: r.SecurityPolicy | r.BackendTrafficPolicy, route: r.HTTPRoute, rule: str | None,
    gateway: r.Gateway, listener: str,
) -> int:  # fmt: skip
    """How specifically `p` targets this rule on this listener (-1: not at all)."""
    rank = -1
    ns = p.meta.namespace
    for t in p.targets:
        if t.kind == route.kind and (t.name, ns) == (route.meta.name, route.meta.namespace):
            section, base = rule, 2
        elif t.kind == "Gateway" and (t.name, ns) == (gateway.meta.name, gateway.meta.namespace):
            section, base = listener, 0
        else:
            continue
        if t.section_name is None:
            rank = max(rank, base)
        elif t.section_name == section:
            rank = max(rank, base + 1)
    return rank


def _nn(meta: r.Meta) -> str:
    return f"{meta.namespace}/{meta.name}"


def _age(p: r.SecurityPolicy | r.BackendTrafficPolicy) -> tuple[str, str, str]:
    return (p.meta.creation_timestamp, p.meta.namespace, p.meta.name)
