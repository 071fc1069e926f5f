"""Injection into a docker compose file (pure: a loaded document in, the same document
changed; the CLI keeps the user's comments and order with a round-trip YAML loader).

For each chosen service S:

- `S-weft-proxy`, the sidecar, owns the network namespace. It starts first, so the app can
  wait for it to be ready, and it takes over what belongs to the namespace rather than to
  the app: `ports`, `expose`, `networks` (with S as an alias, so the name still reaches
  it), `hostname`, `dns`, `extra_hosts`. What it took, and the app's own `depends_on`,
  are kept under `x-weft-original` for `uninject`.
- `S-weft-init` joins that namespace once with NET_ADMIN and runs `meshctl init` (the
  interception rules), as istio-init does in a pod. Published ports stay reachable from
  outside the mesh (they are left out of inbound capture); mesh peers arrive over mTLS.
- S joins the namespace (`network_mode: service:S-weft-proxy`) and starts only when the
  rules are in and the sidecar answers `/ready` (`depends_on` conditions).

Without a control plane in the file, `weft-setup` (CA and one join token per injected
service, on the `weft` volume) and `weft-control-plane` are added; `uninject` removes them
with the last injected service. Injecting twice changes nothing.
"""

from __future__ import annotations

import copy
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

PROXY, INIT = "-weft-proxy", "-weft-init"
SETUP, CONTROL_PLANE, VOLUME = "weft-setup", "weft-control-plane", "weft"
LABEL = "dev.weft.injected"  # on every service inject adds: what it was added for
APP_PORT_LABEL, PROTOCOL_LABEL = "dev.weft.app-port", "dev.weft.protocol"
MOVED_KEYS = ("ports", "expose", "networks", "hostname", "domainname", "dns", "dns_search",
              "dns_opt", "extra_hosts", "mac_address")  # fmt: skip
PROXY_UID = 10001  # the image's `weft` user: `meshctl init` spares its traffic
PROTOCOLS = ("HTTP", "HTTP2", "GRPC", "TCP")
NO = "no"  # restart policy (written quoted: a bare no is a boolean to YAML 1.1 readers)
READY = ("import urllib.request; "
         "urllib.request.urlopen('http://127.0.0.1:15000/ready', timeout=2)")  # fmt: skip

Doc = MutableMapping[str, Any]


class InjectError(ValueError):
    """A service that cannot be injected, and why (one line)."""


@dataclass(frozen=True)
class Options:
    image: str = "weft:latest"
    control_plane: str = ""  # host:port of an existing control plane; "" adds one
    app_ports: tuple[tuple[str, int], ...] = ()  # (service, port) given on the command line


def inject(doc: Doc, chosen: list[str], opts: Options) -> tuple[list[str], list[str]]:
    """Inject `chosen` (every service that can be, when empty): the names injected, and
    for those left out by default, why."""
    services = _services(doc)
    if chosen:
        names, skipped = chosen, []
    else:
        reasons = {n: _reason(services, n) for n in services}
        names = [n for n, why in reasons.items() if why is None or _injected(services, n)]
        skipped = [f"{n}: {why}" for n, why in reasons.items()
                   if why and n not in names and not _quiet(services[n])]  # fmt: skip
    for name in names:
        if name not in services:
            raise InjectError(f"no service {name!r} in the file")
        if not _injected(services, name):
            _check(services, name)
    for name in names:
        _inject_one(doc, services, name, opts)
    _control_plane(doc, services, opts)
    return names, skipped


def uninject(doc: Doc, chosen: list[str]) -> list[str]:
    """Undo `inject` for `chosen` (every injected service, when empty); the names undone."""
    services = _services(doc)
    names = chosen or [n for n in list(services) if _injected(services, n)]
    for name in names:
        if not _injected(services, name):
            raise InjectError(f"service {name!r} is not injected")
        proxy = services.pop(name + PROXY)
        services.pop(name + INIT, None)
        app = services[name]
        if not isinstance(app, MutableMapping) or not isinstance(proxy, MutableMapping):
            raise InjectError(f"{name!r} or {name}{PROXY} is not a mapping")
        app.pop("network_mode", None)
        original = proxy.get("x-weft-original")
        original = original if isinstance(original, MutableMapping) else {}
        for key in (*MOVED_KEYS, "depends_on"):
            if key in original:
                app[key] = original[key]
            else:
                app.pop(key, None)
    _control_plane(doc, services, None)
    return names


def _services(doc: Doc) -> Doc:
    services = doc.get("services")
    if not isinstance(services, MutableMapping):
        raise InjectError("not a compose file: no `services` mapping")
    return services


def _injected(services: Doc, name: str) -> bool:
    return name + PROXY in services


def _labels(service: Doc) -> dict[str, Any]:
    """A service's labels, from either of compose's forms (a mapping, or "k=v" items)."""
    labels = service.get("labels") or {}
    if isinstance(labels, MutableMapping):
        return dict(labels)
    return dict(str(item).partition("=")[::2] for item in labels)


def _ours(service: Any) -> bool:
    return isinstance(service, MutableMapping) and LABEL in _labels(service)


# What inject reads of a service, and the forms compose allows for each
SHAPES: dict[str, tuple[type, ...]] = {
    "ports": (list,), "expose": (list,), "networks": (list, MutableMapping),
    "depends_on": (list, MutableMapping), "labels": (list, MutableMapping),
    "environment": (list, MutableMapping), "deploy": (MutableMapping,), "profiles": (list,),
    "scale": (int, str), "x-weft-original": (MutableMapping,),
}  # fmt: skip


def _shape(service: Doc) -> str | None:
    """What in a service is not in a form compose allows (for what inject reads), or None."""
    for key, kinds in SHAPES.items():
        if key in service and not isinstance(service[key], kinds):
            return f"its {key} is not a {' or '.join(k.__name__ for k in kinds)}"
    networks = service.get("networks")
    if isinstance(networks, MutableMapping) and not all(
        isinstance(v, MutableMapping | None) for v in networks.values()
    ):
        return "its networks' settings are not mappings"
    return None


def _quiet(service: Any) -> bool:
    """Left out by default without a word: the mesh's own services, and those that share
    another's namespace (its sidecar, a log shipper)."""
    if not isinstance(service, MutableMapping):
        return False
    return "network_mode" in service or (_shape(service) is None and _ours(service))


def _reason(services: Doc, name: str) -> str | None:
    """Why `name` cannot be injected, or None."""
    service = services[name]
    if not isinstance(service, MutableMapping):
        return "its definition is not a mapping"
    if (shape := _shape(service)) is not None:
        return shape
    if _ours(service):
        return "it is one of the mesh's own services"
    if "network_mode" in service:
        return f"it has network_mode {service['network_mode']!r} (it must own its namespace)"
    replicas = service.get("scale") or service.get("deploy", {}).get("replicas") or 1
    if str(replicas) != "1":
        return f"it runs {replicas} replicas, which would share one sidecar's namespace"
    for other, definition in services.items():
        if isinstance(definition, MutableMapping) and definition.get("network_mode") in (
            f"service:{name}", f"container:{name}"):  # fmt: skip
            return f"{other!r} shares its network namespace (network_mode service:{name})"
    return None


def _check(services: Doc, name: str) -> None:
    why = _reason(services, name)
    if why is not None:
        raise InjectError(f"cannot inject {name!r}: {why}")


def app_port(service: Doc, name: str, given: dict[str, int]) -> int:
    """The app's port: given, else its label, else the first container port it exposes or
    publishes, else its PORT variable."""
    if name in given:
        return given[name]
    label = _labels(service).get(APP_PORT_LABEL)
    candidates: list[Any] = [label]
    for item in [*(service.get("expose") or []), *(service.get("ports") or [])]:
        candidates.append(_container_port(item))
    env = service.get("environment")
    if isinstance(env, MutableMapping):
        candidates.append(env.get("PORT"))
    elif isinstance(env, list):
        candidates += [e[5:] for e in env if isinstance(e, str) and e.startswith("PORT=")]
    for value in candidates:
        if value is not None and str(value).isdigit() and 0 < int(value) < 65536:
            return int(value)
    raise InjectError(
        f'cannot tell the port of {name!r}: label it {APP_PORT_LABEL}: "8080" or pass '
        f"--app-port {name}=8080"
    )


def _container_port(item: Any) -> str | None:
    """The container side of a `ports`/`expose` entry: 8080, "8080", "80:8080",
    "127.0.0.1:80:8080/tcp", "8000-8001" (first), {target: 8080}."""
    if isinstance(item, MutableMapping):
        return str(item.get("target", ""))
    text = str(item).split("/")[0].rsplit(":", 1)[-1]
    return text.split("-")[0]


def _inject_one(doc: Doc, services: Doc, name: str, opts: Options) -> None:
    app = services[name]
    if _injected(services, name):  # again: from what the first injection kept
        original = dict(services[name + PROXY].get("x-weft-original") or {})
    else:
        original = {k: app.pop(k) for k in MOVED_KEYS if k in app}
        if "depends_on" in app:
            original["depends_on"] = copy.deepcopy(app["depends_on"])
    port = app_port({**app, **original}, name, dict(opts.app_ports))
    protocol = str(_labels(app).get(PROTOCOL_LABEL, "HTTP")).upper()
    if protocol not in PROTOCOLS:
        raise InjectError(f"{name!r}: label {PROTOCOL_LABEL} must be one of {', '.join(PROTOCOLS)}")
    control_plane = opts.control_plane or f"{CONTROL_PLANE}:15010"
    proxy: dict[str, Any] = {
        "image": opts.image,
        "command": ["sidecar", "--service", name, "--app-port", str(port), "--protocol", protocol,
                    "--intercept", "--control-plane", control_plane,
                    "--token-file", f"/weft/tokens/{name}", "--ca-file", "/weft/tokens/root.pem"],
        "volumes": [f"{VOLUME}:/weft:ro"],
        "labels": {LABEL: name},
        "healthcheck": {"test": ["CMD", "python", "-c", READY], "interval": "2s",
                        "timeout": "3s", "retries": 60},
        "restart": "unless-stopped",
        "networks": _with_alias(original.get("networks"), name),
    }  # fmt: skip
    if not opts.control_plane:
        proxy["depends_on"] = {SETUP: {"condition": "service_completed_successfully"},
                               CONTROL_PLANE: {"condition": "service_started"}}  # fmt: skip
    proxy.update({k: v for k, v in original.items() if k in MOVED_KEYS and k != "networks"})
    if "profiles" in app:  # started with the app, not without it
        proxy["profiles"] = list(app["profiles"])
    if original:
        proxy["x-weft-original"] = copy.deepcopy(original)
    services[name + PROXY] = proxy
    published = sorted({int(p) for item in original.get("ports") or []
                        if (p := _container_port(item)) and p.isdigit()})  # fmt: skip
    skip = ",".join(str(p) for p in (15000, 22, *published))
    services[name + INIT] = {
        "image": opts.image,
        "network_mode": f"service:{name}{PROXY}",
        "user": "root",
        "cap_add": ["NET_ADMIN"],
        "command": ["init", "--proxy-uid", str(PROXY_UID), "--skip-inbound-ports", skip],
        "labels": {LABEL: name},
        "restart": NO,
        "depends_on": {name + PROXY: {"condition": "service_started"}},
    }
    if "profiles" in app:
        services[name + INIT]["profiles"] = list(app["profiles"])
    app["network_mode"] = f"service:{name}{PROXY}"
    deps = original.get("depends_on") or {}
    if isinstance(deps, list):  # the short form: started is what it asked for
        deps = {d: {"condition": "service_started"} for d in deps}
    app["depends_on"] = {**deps, name + INIT: {"condition": "service_completed_successfully"},
                         name + PROXY: {"condition": "service_healthy"}}  # fmt: skip


def _with_alias(networks: Any, name: str) -> dict[str, Any]:
    """The app's networks for the proxy, each with the app's name as an alias."""
    if networks is None:
        networks = ["default"]
    if not isinstance(networks, MutableMapping):
        networks = {n: None for n in networks}
    out: dict[str, Any] = {}
    for net, given in networks.items():
        conf = dict(given or {})
        conf["aliases"] = [*(a for a in conf.get("aliases") or [] if a != name), name]
        out[net] = conf
    return out


def _control_plane(doc: Doc, services: Doc, opts: Options | None) -> None:
    """Add (or refresh, or with nothing injected remove) the mesh's own services."""
    injected = [n for n in services if _injected(services, n) and not _ours(services[n])]
    added = _ours(services.get(SETUP))
    if not injected or (opts is not None and opts.control_plane):
        if added:
            services.pop(SETUP, None)
            services.pop(CONTROL_PLANE, None)
        volumes = doc.get("volumes")
        if injected:  # the tokens' volume, which the user fills for their control plane
            _declare_volume(doc)
        elif isinstance(volumes, MutableMapping) and VOLUME in volumes:
            volumes.pop(VOLUME)
            if not volumes:
                doc.pop("volumes")
        return
    if opts is None and not added:
        return
    image = opts.image if opts is not None else services[SETUP].get("image", Options.image)
    tokens = " ".join(injected)
    services[SETUP] = {
        "image": image,
        "user": "root",
        "entrypoint": ["sh", "-ec"],
        "command": [
            "mkdir -p /weft/cp /weft/tokens\n"
            "[ -f /weft/cp/ca/state.json ] || meshctl ca init --data-dir /weft/cp\n"
            f"for s in {tokens}; do\n"
            "  meshctl token create \"$$s\" --ttl 720h --data-dir /weft/cp | tail -n 1 \\\n"
            "    > \"/weft/tokens/$$s\"\n"
            "done\n"
            "cp /weft/cp/ca/root.pem /weft/tokens/root.pem\n"
            f"chown -R {PROXY_UID} /weft\n"
        ],
        "volumes": [f"{VOLUME}:/weft"],
        "labels": {LABEL: "setup"},
        "restart": NO,
    }  # fmt: skip
    networks: dict[str, None] = {}
    for name in injected:
        for net in services[name + PROXY].get("networks") or {}:
            networks[net] = None
    services[CONTROL_PLANE] = {
        "image": image,
        "command": ["server", "--data-dir", "/weft/cp", "--listen", "0.0.0.0:15010",
                    "--http-listen", "0.0.0.0:15014"],
        "volumes": [f"{VOLUME}:/weft"],
        "labels": {LABEL: "control-plane"},
        "restart": "unless-stopped",
        "networks": list(networks),
        "depends_on": {SETUP: {"condition": "service_completed_successfully"}},
    }  # fmt: skip
    _declare_volume(doc)


def _declare_volume(doc: Doc) -> None:
    volumes = doc.get("volumes")
    if not isinstance(volumes, MutableMapping):
        volumes = doc["volumes"] = {}
    volumes.setdefault(VOLUME, {})
