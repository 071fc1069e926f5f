"""Kubernetes Ingress and IngressClass (networking.k8s.io/v1), as the API server validates
them: paths absolute for Exact and Prefix, hosts DNS names with at most a leading `*.`,
backends a Service with a port number or name (resource backends are not served)."""

from __future__ import annotations

import re

from sidecar.config.reader import Reader
from sidecar.config.resources import (
    Ingress,
    IngressBackend,
    IngressClass,
    IngressPath,
    IngressRule,
    Meta,
)

LEGACY_CLASS = "kubernetes.io/ingress.class"
DEFAULT_CLASS = "ingressclass.kubernetes.io/is-default-class"
_HOST = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def parse_ingress(top: Reader, meta: Meta) -> Ingress:
    spec = top.req_obj("spec")
    class_name = spec.text("ingressClassName", None) or meta.annotations.get(LEGACY_CLASS)
    default = spec.obj("defaultBackend")
    default_backend = _backend(default) if default is not None else None
    rules = []
    for rr in spec.objs("rules", max_items=1000):
        host = rr.text("host", None, pattern=_HOST, max_len=253)
        paths = []
        http = rr.obj("http")
        for pr in http.objs("paths", max_items=1000) if http is not None else []:
            path_type = pr.text("pathType", choices=("Exact", "Prefix", "ImplementationSpecific"))
            path = pr.text("path", "/" if path_type == "ImplementationSpecific" else None,
                           max_len=4096)  # fmt: skip
            if not path.startswith("/"):
                pr.fail("path", f"{path!r} must start with /")
            br = pr.req_obj("backend")
            paths.append(IngressPath(path=path, path_type=path_type, backend=_backend(br)))
            pr.finish()
        if http is not None:
            http.finish()
        rr.finish()
        rules.append(IngressRule(host=host, paths=tuple(paths)))
    tls = []
    for tr in spec.objs("tls", max_items=100):
        hosts = tuple(tr.str_list("hosts", pattern=_HOST))
        secret = tr.text("secretName", "")
        tr.finish()
        if secret:
            tls.append((hosts, secret))
    if default_backend is None and not rules:
        spec.fail("rules", "an Ingress needs rules or a defaultBackend")
    spec.finish()
    return Ingress(meta=meta, class_name=class_name, default_backend=default_backend,
                   rules=tuple(rules), tls=tuple(tls))  # fmt: skip


def _backend(r: Reader) -> IngressBackend:
    sr = r.obj("service")
    if sr is None:
        if r.obj("resource") is not None:
            r.fail("resource", "resource backends are not served; use a Service")
        r.fail("service", "required")
    name = sr.text("name", max_len=63)
    pr = sr.req_obj("port")
    number = pr.integer("number", None, lo=1, hi=65535)
    port_name = pr.text("name", None, pattern=_PORT_NAME, max_len=15)
    pr.finish()
    sr.finish()
    r.finish()
    if (number is None) == (port_name is None):
        sr.fail("port", "exactly one of number and name")
    return IngressBackend(service=name, port=number if number is not None else str(port_name))


def parse_ingress_class(top: Reader, meta: Meta) -> IngressClass:
    spec = top.req_obj("spec")
    controller = spec.text("controller", max_len=250)
    spec.ignore("parameters")
    spec.finish()
    default = meta.annotations.get(DEFAULT_CLASS, "false") == "true"
    return IngressClass(meta=meta, controller=controller, default=default)
