"""SPIFFE IDs of Weft workloads: `spiffe://<trust-domain>/ns/<namespace>/svc/<service>`."""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_TRUST_DOMAIN = "weft.local"
# SPIFFE trust domains: lower-case letters, digits, dots, dashes and underscores.
TRUST_DOMAIN_RE = re.compile(r"^[a-z0-9._-]{1,255}$")
# Namespaces and services are Kubernetes names (DNS-1123 labels).
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")  # a DNS label: namespaces, services


class InvalidSpiffeId(ValueError):
    """Not a Weft SPIFFE ID; the message says which part is wrong."""


@dataclass(frozen=True, slots=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service: str

    def __post_init__(self) -> None:
        if not TRUST_DOMAIN_RE.match(self.trust_domain):
            raise InvalidSpiffeId(f"trust domain {self.trust_domain!r} is not valid")
        for what, value in (("namespace", self.namespace), ("service", self.service)):
            if not NAME.match(value):
                raise InvalidSpiffeId(f"{what} {value!r} is not a DNS-1123 label")

    @property
    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/svc/{self.service}"

    def __str__(self) -> str:
        return self.uri

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        if not uri.startswith("spiffe://"):
            raise InvalidSpiffeId(f"{uri!r} is not a spiffe:// URI")
        rest = uri[len("spiffe://") :]
        domain, _, path = rest.partition("/")
        parts = path.split("/")
        if len(parts) != 4 or parts[0] != "ns" or parts[2] != "svc":
            raise InvalidSpiffeId(f"{uri!r} is not spiffe://<domain>/ns/<namespace>/svc/<service>")
        return cls(domain, parts[1], parts[3])
