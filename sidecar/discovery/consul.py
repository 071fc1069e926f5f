"""Consul's HTTP API as Weft uses it (pure core: no I/O).

Where Consul is (`consul://HOST:PORT[/PREFIX]`, Consul's own environment variables for
the token and TLS), what a sidecar registers with its local agent, how a
`/v1/health/service/<name>?passing` answer becomes endpoints, how KV entries decode, and the
blocking-query index rules from Consul's documentation ("Blocking Queries"): keep the
`X-Consul-Index` of each answer, send it back as `index`; reset to 0 when it goes backwards
(a server restore or a different server); never send less than 1 after the first answer;
and rate-limit the loop, since an answer can come back at once without any change.
"""

from __future__ import annotations

import base64
import json
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

DEFAULT_ADDR = "127.0.0.1:8500"
DEFAULT_PREFIX = "weft"
WAIT = "55s"  # below common 60 s proxy timeouts; Consul adds up to wait/16 of jitter
MESH_TAG = "weft"  # instances registered by Weft sidecars (endpoints speak mTLS)


class ConsulError(Exception):
    """Consul refused or could not be reached; the message says which and why."""


class ConsulRefused(ConsulError):
    """Consul answered, and said no (an ACL, a bad request): `status` is its HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class CasConflict(ConsulError):
    """A check-and-set lost: someone else wrote first. Re-read and try again."""


@dataclass(frozen=True, slots=True)
class ConsulConfig:
    """How to reach Consul, from a `consul://` URL and Consul's environment variables
    (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN[_FILE], CONSUL_HTTP_SSL, CONSUL_HTTP_SSL_VERIFY,
    CONSUL_CACERT, CONSUL_CAPATH, CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY,
    CONSUL_TLS_SERVER_NAME), as Consul's own CLI reads them."""

    base_url: str  # http(s)://host:port
    prefix: str = DEFAULT_PREFIX  # KV prefix for the control plane's resources
    token: str = field(default="", repr=False)
    ca_file: str = ""
    ca_path: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""
    verify: bool = True

    @property
    def tls(self) -> bool:
        return self.base_url.startswith("https://")

    def headers(self) -> dict[str, str]:
        return {"X-Consul-Token": self.token} if self.token else {}


def parse_url(url: str, env: dict[str, str] | None = None, *, token: str = "") -> ConsulConfig:
    """`consul://[HOST:PORT][/PREFIX]` (`consul+https://` for TLS); ValueError if malformed.
    Without a host, CONSUL_HTTP_ADDR or 127.0.0.1:8500. `token` overrides the environment."""
    env = dict(os.environ if env is None else env)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("consul", "consul+http", "consul+https"):
        raise ValueError(f"{url!r}: expected consul://HOST:PORT (or consul+https://…)")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{url!r}: give the token with --consul-token or CONSUL_HTTP_TOKEN")
    addr = parts.netloc or env.get("CONSUL_HTTP_ADDR", "") or DEFAULT_ADDR
    scheme = "http"
    if "://" in addr:
        scheme, _, addr = addr.partition("://")
    if parts.scheme == "consul+https" or _truthy(env.get("CONSUL_HTTP_SSL", "")):
        scheme = "https"
    elif parts.scheme == "consul+http":
        scheme = "http"
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{url!r}: the Consul address must be HOST:PORT, got {addr!r}")
    prefix = parts.path.strip("/") or DEFAULT_PREFIX
    if any(not seg or seg in (".", "..") for seg in prefix.split("/")):
        raise ValueError(f"{url!r}: bad KV prefix {prefix!r}")
    if not token:
        token = env.get("CONSUL_HTTP_TOKEN", "")
        if not token and env.get("CONSUL_HTTP_TOKEN_FILE"):
            try:
                with open(env["CONSUL_HTTP_TOKEN_FILE"], encoding="utf-8") as f:
                    token = f.read().strip()
            except OSError as exc:
                raise ValueError(f"CONSUL_HTTP_TOKEN_FILE: {exc}") from None
    return ConsulConfig(
        base_url=f"{scheme}://{addr}",
        prefix=prefix,
        token=token,
        ca_file=env.get("CONSUL_CACERT", ""),
        ca_path=env.get("CONSUL_CAPATH", ""),
        cert_file=env.get("CONSUL_CLIENT_CERT", ""),
        key_file=env.get("CONSUL_CLIENT_KEY", ""),
        server_name=env.get("CONSUL_TLS_SERVER_NAME", ""),
        verify=env.get("CONSUL_HTTP_SSL_VERIFY", "true").lower() not in ("0", "false", "no"),
    )


def _truthy(value: str) -> bool:
    return value.lower() in ("1", "true", "yes")


# -- blocking queries ---------------------------------------------------------------------
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a Go duration as Consul writes them ("55s", "5m", "1m30s", "100ms")."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise ValueError(f"invalid duration {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def next_index(previous: int, answered: str | None) -> int:
    """The `index` to send next, given the last one sent and the `X-Consul-Index` answered."""
    try:
        index = int(answered or "")
    except ValueError:
        raise ConsulError(f"bad X-Consul-Index {answered!r}") from None
    if index < previous:  # went backwards: start over, or we would wait on a future index
        return 0
    return max(index, 1)


# -- registration -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Registration:
    """One sidecar's service instance, as the local Consul agent is told about it."""

    service: str
    namespace: str
    version: str
    protocol: str
    address: str  # where peers reach the sidecar's inbound (mTLS) port
    port: int
    check_url: str  # the sidecar's own readiness endpoint
    identity: str = ""  # its SPIFFE ID
    tags: tuple[str, ...] = ()
    weight: int = 1
    check_interval: str = "5s"
    check_timeout: str = "2s"
    deregister_after: str = "1m"

    @property
    def id(self) -> str:
        """Stable per listener, so a restarted sidecar replaces its own entry."""
        host = self.address.replace(":", "_")
        return f"{self.service}-{host}-{self.port}"

    def body(self) -> dict[str, Any]:
        """For `PUT /v1/agent/service/register`."""
        meta = {"version": self.version, "namespace": self.namespace, "protocol": self.protocol}
        if self.identity:
            meta["spiffe_id"] = self.identity
        return {
            "ID": self.id,
            "Name": self.service,
            "Tags": [MESH_TAG, *(t for t in self.tags if t != MESH_TAG)],
            "Address": self.address,
            "Port": self.port,
            "Meta": meta,
            "Weights": {"Passing": self.weight, "Warning": 1},
            "Check": {
                "CheckID": f"service:{self.id}",
                "Name": "Weft sidecar ready",
                "HTTP": self.check_url,
                "Method": "GET",
                "Interval": self.check_interval,
                "Timeout": self.check_timeout,
                # registered once ready: passing at once rather than after one interval
                "Status": "passing",
                "DeregisterCriticalServiceAfter": self.deregister_after,
            },
        }


# -- discovery ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceInstance:
    """A passing instance of a service, from a health answer."""

    id: str
    service: str
    namespace: str
    address: str
    port: int
    version: str = ""
    protocol: str = "HTTP"
    weight: int = 1


PROTOCOLS = ("HTTP", "HTTP2", "GRPC", "TCP")


def parse_health(body: object, service: str) -> list[ServiceInstance]:
    """Instances from `GET /v1/health/service/<service>?passing`, sorted by ID. An entry
    without `Service.Address` is reached at its node's address (as Consul's DNS does); a
    zero `Weights.Passing` takes no traffic. ConsulError when the answer is not the
    documented shape."""
    if not isinstance(body, list):
        raise ConsulError(f"health of {service}: expected a JSON array")
    out: list[ServiceInstance] = []
    for n, entry in enumerate(body):
        try:
            svc = entry["Service"]
            meta = svc.get("Meta") or {}
            address = svc.get("Address") or entry["Node"]["Address"]
            weights = svc.get("Weights") or {}
            protocol = str(meta.get("protocol", "HTTP")).upper()
            inst = ServiceInstance(
                id=str(svc["ID"]),
                service=str(svc["Service"]),
                namespace=str(meta.get("namespace") or "default"),
                address=str(address),
                port=int(svc["Port"]),
                version=str(meta.get("version", "")),
                protocol=protocol if protocol in PROTOCOLS else "HTTP",
                weight=int(weights.get("Passing", 1)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConsulError(f"health of {service}: entry {n} is malformed ({exc!r})") from None
        if inst.weight > 0 and 0 < inst.port < 65536:
            out.append(inst)
    return sorted(out, key=lambda i: i.id)


def mesh_services(body: object) -> list[str]:
    """Names of the services Weft sidecars registered, from `GET /v1/catalog/services`
    (`{"name": ["tag", …]}`)."""
    if not isinstance(body, dict):
        raise ConsulError("catalog services: expected a JSON object")
    return sorted(name for name, tags in body.items() if MESH_TAG in (tags or ()))


# -- KV -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class KvEntry:
    key: str
    value: bytes
    modify_index: int


def parse_kv(body: object) -> list[KvEntry]:
    """Entries from `GET /v1/kv/<prefix>?recurse` (Value is base64, null for an empty one)."""
    if not isinstance(body, list):
        raise ConsulError("KV answer: expected a JSON array")
    out = []
    for n, item in enumerate(body):
        try:
            raw = item.get("Value")
            value = base64.b64decode(raw, validate=True) if raw else b""
            out.append(KvEntry(str(item["Key"]), value, int(item["ModifyIndex"])))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConsulError(f"KV answer: entry {n} is malformed ({exc!r})") from None
    return out


TXN_MAX_OPS = 64  # Consul's limit of operations in one transaction


def txn_set(key: str, value: bytes, index: int) -> dict[str, Any]:
    """A transaction operation: write `key` only if its ModifyIndex is still `index`
    (0: only if it does not exist)."""
    return {"KV": {"Verb": "cas", "Key": key, "Value": base64.b64encode(value).decode(),
                   "Index": index}}  # fmt: skip


def txn_delete(key: str, index: int) -> dict[str, Any]:
    return {"KV": {"Verb": "delete-cas", "Key": key, "Index": index}}


def txn_errors(body: object) -> str:
    """Why a transaction was rolled back (Consul answers 409 with `Errors`)."""
    if isinstance(body, dict) and isinstance(body.get("Errors"), list):
        return "; ".join(f"operation {e.get('OpIndex')}: {e.get('What')}" for e in body["Errors"])
    return json.dumps(body)[:200]


def txn_indexes(body: object) -> dict[str, int]:
    """Key -> new ModifyIndex from a committed transaction's `Results`."""
    out: dict[str, int] = {}
    if isinstance(body, dict):
        for result in body.get("Results") or ():
            kv = result.get("KV") if isinstance(result, dict) else None
            if isinstance(kv, dict) and "Key" in kv:
                out[str(kv["Key"])] = int(kv.get("ModifyIndex", 0))
    return out
