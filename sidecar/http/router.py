"""Compiled Gateway API route tables: listener, hostname and rule selection, all pure.

Theory of operation. Precedence in the Gateway API is a total order: listener hostname
specificity, then route hostname specificity (exact before wildcard, longer wildcard
first), then within the rules of all routes sharing that hostname tier: Exact path, then
RegularExpression (longer pattern first; placement is implementation-specific), then
PathPrefix by length, then method, number of header matches, number of query matches,
route age, route namespace/name, rule order, match order.

Tables are built so that a lookup never scans every route: hostnames are dict lookups
(exact, then each wildcard suffix from longest to shortest), exact paths are a dict, and a
path prefix lookup walks the request path's own segment boundaries from longest to
shortest, each one dict lookup. Each bucket holds its candidates already sorted, and the
first whose method/header/query conditions hold wins. Only RegularExpression paths are a
list scan, and only over regex rules of the hostname tier being searched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from sidecar.config.certs import CertificatePair, ClientValidation
from sidecar.config.model import RouteAction
from sidecar.proxy.egress import EgressPolicy

# A request's fields as parsed, and its query string; turned into maps only for the few
# rules that match on them.
Fields = list[tuple[bytes, bytes]]
# (name, exact value or None, regex or None)
Condition = tuple[str, str | None, re.Pattern[str] | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class CompiledMatch:
    """One HTTPRouteMatch of one rule, ready to test against a request."""

    action: RouteAction
    path_type: str  # Exact | PathPrefix | RegularExpression
    path_value: str
    method: str | None
    headers: tuple[Condition, ...]
    query: tuple[Condition, ...]
    path_regex: re.Pattern[str] | None = None
    # the path as a route template (spans' http.route): /a/b, /a/* for a prefix, or the regex
    template: str = ""
    # precedence inside one path bucket: smaller sorts first
    order: tuple[object, ...] = ()

    def conditions_hold(self, method: str, headers: Fields, query: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        if self.headers:
            hmap = header_map(headers)
            for name, exact, rx in self.headers:
                value = hmap.get(name)
                if value is None:
                    return False
                if rx is None:
                    if value != exact:
                        return False
                elif not rx.fullmatch(value):
                    return False
        if self.query:
            qmap = parse_qs(query, keep_blank_values=True) if query else {}
            for name, exact, rx in self.query:
                values = qmap.get(name)
                if not values:
                    return False
                # The first value of a repeated parameter is the one matched (spec: "first").
                first = values[0]
                if (rx is None and first != exact) or (rx is not None and not rx.fullmatch(first)):
                    return False
        return True


@dataclass(slots=True)
class PathTable:
    """Rules of one hostname tier, indexed by path."""

    exact: dict[str, list[CompiledMatch]] = field(default_factory=dict)
    prefix: dict[str, list[CompiledMatch]] = field(default_factory=dict)
    regex: list[CompiledMatch] = field(default_factory=list)

    def add(self, m: CompiledMatch) -> None:
        if m.path_type == "Exact":
            self.exact.setdefault(m.path_value, []).append(m)
        elif m.path_type == "PathPrefix":
            self.prefix.setdefault(_prefix_key(m.path_value), []).append(m)
        else:
            self.regex.append(m)

    def seal(self) -> None:
        for bucket in (*self.exact.values(), *self.prefix.values()):
            bucket.sort(key=_order)
        self.regex.sort(key=_order)

    def find(self, path: str, method: str, headers: Fields, query: str) -> CompiledMatch | None:
        bucket = self.exact.get(path)
        if bucket:
            for m in bucket:
                if m.conditions_hold(method, headers, query):
                    return m
        for m in self.regex:
            assert m.path_regex is not None
            if m.path_regex.fullmatch(path) and m.conditions_hold(method, headers, query):
                return m
        prefix = self.prefix
        if not prefix:
            return None
        key = path.rstrip("/")
        while True:
            bucket = prefix.get(key)
            if bucket:
                for m in bucket:
                    if m.conditions_hold(method, headers, query):
                        return m
            if not key:
                return None
            key = key[: key.rfind("/")]


def _prefix_key(value: str) -> str:
    """The index key of a PathPrefix: trailing slashes do not count (`/abc/` ≡ `/abc`)."""
    return value.rstrip("/")


def _order(m: CompiledMatch) -> tuple[object, ...]:
    return m.order


@dataclass(slots=True)
class HostTable:
    """The rules reachable through one listener, by effective route hostname."""

    exact: dict[str, PathTable] = field(default_factory=dict)
    wildcard: dict[str, PathTable] = field(default_factory=dict)  # ".example.com" -> table
    any: PathTable | None = None
    # wildcards that match one leading label only (an Ingress's hosts), by suffix
    one_label: dict[str, PathTable] = field(default_factory=dict)

    def table_for(self, hostname: str | None, single_label: bool = False) -> PathTable:
        if hostname is None:
            if self.any is None:
                self.any = PathTable()
            return self.any
        if hostname.startswith("*."):
            tables = self.one_label if single_label else self.wildcard
            return tables.setdefault(hostname[1:], PathTable())
        return self.exact.setdefault(hostname, PathTable())

    def seal(self) -> None:
        for t in self.tables():
            t.seal()

    def tables(self) -> Iterable[PathTable]:
        yield from self.exact.values()
        yield from self.one_label.values()
        yield from self.wildcard.values()
        if self.any is not None:
            yield self.any

    def find(
        self, host: str, path: str, method: str, headers: Fields, query: str
    ) -> CompiledMatch | None:
        table = self.exact.get(host)
        if table is not None:
            m = table.find(path, method, headers, query)
            if m is not None:
                return m
        if self.one_label:
            dot = host.find(".")
            table = self.one_label.get(host[dot:]) if dot > 0 else None
            if table is not None:
                m = table.find(path, method, headers, query)
                if m is not None:
                    return m
        if self.wildcard:
            for suffix in wildcard_suffixes(host):
                table = self.wildcard.get(suffix)
                if table is not None:
                    m = table.find(path, method, headers, query)
                    if m is not None:
                        return m
        if self.any is not None:
            return self.any.find(path, method, headers, query)
        return None


@dataclass(slots=True, kw_only=True)
class ListenerRoutes:
    name: str  # "namespace/gateway/listener"
    hostname: str | None
    port: int
    hosts: HostTable
    certificates: tuple[CertificatePair, ...] = ()  # HTTPS listeners
    client: ClientValidation | None = None  # HTTPS listeners: client certificates
    tcp: RouteAction | None = None  # TCP listeners, and the fallback of detecting ones
    sni: Mapping[str, RouteAction] = field(default_factory=dict)  # TLS passthrough by SNI

    def passthrough(self, sni: str | None) -> RouteAction | None:
        """The TLSRoute for a ClientHello's server name: exact, longest wildcard, any."""
        routes = self.sni
        if not routes:
            return None
        if sni:
            if sni in routes:
                return routes[sni]
            for suffix in wildcard_suffixes(sni):
                action = routes.get("*" + suffix)
                if action is not None:
                    return action
        return routes.get("*")


@dataclass(slots=True)
class PortRouter:
    """Every listener sharing one (address, port), chosen by hostname (listener isolation)."""

    protocol: str = "HTTP"  # HTTP | HTTPS | TCP | TLS | weft.dev/Detect, one per port
    exact: dict[str, ListenerRoutes] = field(default_factory=dict)
    # weft.dev/ForwardProxy: what its clients may reach (None: nothing)
    egress: EgressPolicy | None = None
    wildcard: dict[str, ListenerRoutes] = field(default_factory=dict)
    any: ListenerRoutes | None = None

    def add(self, listener: ListenerRoutes) -> None:
        h = listener.hostname
        if h is None:
            self.any = self.any or listener
        elif h.startswith("*."):
            self.wildcard.setdefault(h[1:], listener)
        else:
            self.exact.setdefault(h, listener)

    def listeners(self) -> Iterable[ListenerRoutes]:
        yield from self.exact.values()
        yield from self.wildcard.values()
        if self.any is not None:
            yield self.any

    def listener_for(self, host: str) -> ListenerRoutes | None:
        lst = self.exact.get(host)
        if lst is not None:
            return lst
        if self.wildcard:
            for suffix in wildcard_suffixes(host):
                lst = self.wildcard.get(suffix)
                if lst is not None:
                    return lst
        return self.any

    def route(
        self, host: str, path: str, method: str, headers: Fields, query: str
    ) -> CompiledMatch | None:
        lst = self.listener_for(host)
        if lst is None:
            return None
        return lst.hosts.find(host, path, method, headers, query)


def header_map(headers: list[tuple[bytes, bytes]]) -> Mapping[str, str]:
    """Lower-case field name -> values joined with "," in arrival order."""
    out: dict[str, str] = {}
    for name, value in headers:
        key = name.decode("latin-1").lower()
        v = value.decode("latin-1")
        out[key] = f"{out[key]},{v}" if key in out else v
    return out


def wildcard_suffixes(host: str) -> Iterable[str]:
    """`.b.example.com`, `.example.com`, `.com` for `a.b.example.com`: longest first, as
    a wildcard hostname `*.suffix` matches one or more leading labels."""
    dot = host.find(".")
    while dot != -1:
        yield host[dot:]
        dot = host.find(".", dot + 1)


def normalize_host(authority: str) -> str:
    """Host for matching: lower-case, without port or trailing dot."""
    if authority.startswith("["):
        end = authority.find("]")
        return authority[: end + 1].lower() if end != -1 else authority.lower()
    host = authority.rpartition(":")[0] if ":" in authority else authority
    return host.rstrip(".").lower()
