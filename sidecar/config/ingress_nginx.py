"""The most-used `nginx.ingress.kubernetes.io/*` annotations of an Ingress, read into what
Weft's filters and policies do (pure), for users leaving ingress-nginx. config/ingress.py
applies them; docs/ingress.md has the table. An annotation Weft does not translate, or
whose value does not parse, is a warning that names it — never silently ignored.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

PREFIX = "nginx.ingress.kubernetes.io/"
# ingress-nginx's defaults for the CORS family
CORS_METHODS = "GET, PUT, POST, DELETE, PATCH, OPTIONS"
CORS_HEADERS = ("DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,"
                "Content-Type,Range,Authorization")  # fmt: skip
CORS_MAX_AGE = 1728000
_SIZE = re.compile(r"^(\d+)([kKmMgG]?)$")
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


@dataclass
class Cors:
    origins: list[str]
    methods: list[str]
    headers: list[str]
    expose: list[str]
    credentials: bool
    max_age_s: int


@dataclass
class Canary:
    weight: int = 0  # of `total`
    total: int = 100
    header: str = ""  # requests with it "always" go to the canary, "never" never
    header_value: str = ""  # instead of "always": this value


@dataclass
class NginxSettings:
    ssl_redirect: bool = False  # ssl-redirect or force-ssl-redirect: "true"
    max_body: int | None = None  # proxy-body-size, bytes (0: no limit)
    read_timeout_s: int | None = None  # proxy-read-timeout
    allow_cidrs: list[str] = field(default_factory=list)  # whitelist-source-range
    limit_rps: int | None = None
    cors: Cors | None = None
    basic_auth_secret: tuple[str, str] | None = None  # (namespace, name) of auth-secret
    realm: str = ""
    canary: Canary | None = None
    use_regex: bool = False  # paths are case-insensitive regexes (use-regex, rewrite-target)
    rewrite_target: str = ""  # the new path, $1… its groups (rewrite-target)
    backend_protocol: str | None = None  # backend-protocol: GRPC (HTTP/2) or HTTP
    backend_tls: bool = False  # backend-protocol: HTTPS or GRPCS
    connect_timeout_s: int | None = None  # proxy-connect-timeout

    @property
    def security(self) -> bool:
        return bool(self.cors or self.allow_cidrs or self.basic_auth_secret)


TRANSLATED = (
    "ssl-redirect", "force-ssl-redirect", "proxy-body-size", "proxy-read-timeout",
    "whitelist-source-range", "limit-rps", "enable-cors", "cors-allow-origin",
    "cors-allow-methods", "cors-allow-headers", "cors-expose-headers",
    "cors-allow-credentials", "cors-max-age", "auth-type", "auth-secret", "auth-realm",
    "canary", "canary-weight", "canary-weight-total", "canary-by-header",
    "canary-by-header-value", "rewrite-target", "use-regex", "backend-protocol",
    "proxy-connect-timeout",
)  # fmt: skip
# backend-protocol values: (the cluster protocol, over TLS)
BACKEND_PROTOCOLS = {"HTTP": ("HTTP", False), "GRPC": ("GRPC", False),
                     "HTTPS": ("HTTP", True), "GRPCS": ("GRPC", True)}  # fmt: skip


def parse(
    annotations: dict[str, str], namespace: str, where: str
) -> tuple[NginxSettings, list[str]]:
    """The settings the annotations ask for, and a warning for each one not translated or
    not understood (`where` names the Ingress in them)."""
    got = {k[len(PREFIX) :]: v.strip() for k, v in annotations.items() if k.startswith(PREFIX)}
    out = NginxSettings()
    warnings = [f"{where}: annotation {PREFIX}{k} is not supported (ignored)"
                for k in sorted(got) if k not in TRANSLATED]  # fmt: skip

    def bad(key: str, why: str) -> None:
        warnings.append(f"{where}: annotation {PREFIX}{key}: {why} (ignored)")

    def flag(key: str) -> bool:
        return got.get(key, "").lower() == "true"

    def number(key: str) -> int | None:
        text = got.get(key)
        if text is None:
            return None
        if not text.isdigit():
            bad(key, f"{text!r} is not a whole number")
            return None
        return int(text)

    out.ssl_redirect = flag("ssl-redirect") or flag("force-ssl-redirect")
    if "rewrite-target" in got:  # ingress-nginx: it implies use-regex
        target = got["rewrite-target"]
        if not target.startswith("/"):
            bad("rewrite-target", f"{target!r} must start with /")
        else:
            out.rewrite_target = re.sub(r"\$(\d)", r"\\\1", target)  # $2 -> \2
    out.use_regex = flag("use-regex") or bool(out.rewrite_target)
    if "proxy-body-size" in got:
        m = _SIZE.match(got["proxy-body-size"])
        if m is None:
            bad("proxy-body-size", f"{got['proxy-body-size']!r} is not a size like 8m")
        else:
            out.max_body = int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    out.read_timeout_s = number("proxy-read-timeout")
    out.connect_timeout_s = number("proxy-connect-timeout") or None
    if "backend-protocol" in got:
        value = got["backend-protocol"].upper()
        if value in BACKEND_PROTOCOLS:
            out.backend_protocol, out.backend_tls = BACKEND_PROTOCOLS[value]
        else:
            bad("backend-protocol", f"{got['backend-protocol']!r}: HTTP, HTTPS, GRPC and "
                "GRPCS are translated")  # fmt: skip
    for cidr in (c.strip() for c in got.get("whitelist-source-range", "").split(",")):
        if not cidr:
            continue
        try:
            out.allow_cidrs.append(str(ipaddress.ip_network(cidr, strict=False)))
        except ValueError:
            bad("whitelist-source-range", f"{cidr!r} is not a CIDR")
    out.limit_rps = number("limit-rps") or None
    if flag("enable-cors"):
        max_age = number("cors-max-age")
        out.cors = Cors(
            origins=_list(got.get("cors-allow-origin", "*")),
            methods=_list(got.get("cors-allow-methods", CORS_METHODS)),
            headers=_list(got.get("cors-allow-headers", CORS_HEADERS)),
            expose=_list(got.get("cors-expose-headers", "")),
            credentials=got.get("cors-allow-credentials", "true").lower() == "true",
            max_age_s=CORS_MAX_AGE if max_age is None else max_age,
        )
    if "auth-type" in got:
        if got["auth-type"] != "basic":
            bad("auth-type", f"{got['auth-type']!r}: only basic is translated")
        elif not got.get("auth-secret"):
            bad("auth-type", "basic needs auth-secret")
        else:
            ns, _, name = got["auth-secret"].rpartition("/")
            out.basic_auth_secret = (ns or namespace, name)
            out.realm = got.get("auth-realm", "")
    if flag("canary"):
        weight, total = number("canary-weight"), number("canary-weight-total")
        out.canary = Canary(weight=weight or 0, total=total or 100,
                            header=got.get("canary-by-header", ""),
                            header_value=got.get("canary-by-header-value", ""))  # fmt: skip
        if out.canary.weight > out.canary.total:
            bad("canary-weight", f"{out.canary.weight} is more than {out.canary.total}")
            out.canary.weight = out.canary.total
    return out, warnings


def _list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]
