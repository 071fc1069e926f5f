"""`meshctl`: the Weft command line. Each verb is a small function; errors are one line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from sidecar import BUILD, __version__

if TYPE_CHECKING:
    import datetime

    from sidecar.config.ingress import IngressListeners
    from sidecar.modes.sidecar import SidecarOptions
from mesh_ctl import common, telemetry
from mesh_ctl.common import CliError
from sidecar.errors import ConfigError


def _edge(args: argparse.Namespace) -> int:
    from sidecar.config.model import Limits
    from sidecar.filters.global_ratelimit import global_limits
    from sidecar.filters.jwks import trust_context
    from sidecar.modes.edge import MESH_ONLY, EdgeServer

    if args.control_plane:
        if args.workers > 1:
            print("meshctl: --workers runs edges from files (-f); in a mesh, run more edges",
                  file=sys.stderr)  # fmt: skip
            return 2
        return _edge_in_mesh(args)
    if not args.file:
        print("meshctl: give -f FILE|DIR, or --control-plane HOST:PORT to join a mesh",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.workers > 1:
        from mesh_ctl.workers import Supervisor

        supervisor = Supervisor(
            args.argv, args.workers, args.file, gateway_class=args.gateway_class,
            admin_address=args.admin_address, admin_port=args.admin_port,
            drain_timeout_s=args.drain_timeout,
        )  # fmt: skip
        return _run_trio(supervisor.run)

    sink = telemetry.access_log_sink(args.access_log)
    trace = telemetry.trace_options(args)
    limits = Limits(
        max_header_bytes=args.max_header_bytes,
        max_request_body_bytes=args.max_request_body_bytes,
        idle_timeout_s=args.idle_timeout,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        min_body_rate=args.min_body_rate,
        max_connections_per_client=args.max_connections_per_client,
        max_requests_per_client=args.max_requests_per_client,
        merge_slashes=args.merge_slashes,
        escaped_slashes=args.escaped_slashes,
        tls_handshake_timeout_s=args.tls_handshake_timeout,
        detect_timeout_s=args.detect_timeout,
        upgrades=frozenset(t.strip().lower().encode() for t in args.upgrade.split(",") if t),
        trusted_hops=args.trusted_hops,
    )
    trust = trust_context(args.trust_bundle)
    server = EdgeServer(
        args.file,
        limits=limits,
        gateway_class=args.gateway_class,
        admin_address=args.admin_address,
        admin_port=args.admin_port,
        access_log=sink,
        drain_timeout_s=args.drain_timeout,
        trace=trace,
        refused=MESH_ONLY,
        trust=trust,
        ratelimit=global_limits(
            args.ratelimit_redis,
            fail_closed=args.ratelimit_fail_closed,
            tls=trust,
        ),
        worker=args.worker_index is not None,
        ingress=_ingress_listeners(args),
    )  # fmt: skip
    return _run_trio(server.run)


def _workers(text: str) -> int:
    if text == "auto":
        return len(os.sched_getaffinity(0))
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of processes (1 or more) or auto")
    return n


def _hops(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n <= 16:
        raise argparse.ArgumentTypeError(f"must be a number of proxies from 0 to 16; got {text!r}")
    return n


def _run_trio(main: Callable[[], Awaitable[object]]) -> int:
    """trio.run; Ctrl-C, bare or inside a nursery's exception group, is exit status 130."""
    try:
        trio.run(main)
    except KeyboardInterrupt:
        return 130
    except BaseExceptionGroup as group:
        if group.split(KeyboardInterrupt)[1] is None:
            return 130
        raise
    return 0


def _ca(args: argparse.Namespace) -> int:
    import datetime
    import json

    from ca import keystore

    now = datetime.datetime.now(datetime.UTC)
    data_dir = common.data_dir(args)
    try:
        if args.ca_command == "init":
            ca = keystore.init(data_dir, args.trust_domain, now)
        elif args.ca_command == "rotate":
            ca = keystore.rotate(data_dir, now)
        else:
            ca = keystore.load(data_dir, now)
    except keystore.KeystoreError as exc:
        print(f"meshctl: {exc}", file=sys.stderr)
        return 1
    rows = [
        {
            "kind": "root" if r.retire_after is None else "root (retiring)",
            "generation": r.generation,
            "fingerprint": keystore.fingerprint(r.cert),
            "expires": r.cert.not_valid_after_utc.isoformat(),
            "leaves_bundle": r.retire_after.isoformat() if r.retire_after else None,
        }
        for r in ca.roots
    ]
    rows.append(
        {
            "kind": "intermediate",
            "generation": ca.generation,
            "fingerprint": keystore.fingerprint(ca.signer.cert),
            "expires": ca.signer.cert.not_valid_after_utc.isoformat(),
            "leaves_bundle": None,
        }
    )
    if args.output == "json":
        print(json.dumps({"trust_domain": ca.trust_domain, "certificates": rows}, indent=2))
        return 0
    if args.ca_command != "show":
        print(f"CA for trust domain {ca.trust_domain} in {keystore.ca_dir(data_dir)}")
        print(f"trust bundle (for --ca-file): {keystore.ca_dir(data_dir) / 'root.pem'}")
    print(f"{'KIND':<16} {'GEN':>3}  {'EXPIRES':<25} {'LEAVES BUNDLE':<25} FINGERPRINT")
    for r in rows:
        leaves = r["leaves_bundle"] or "-"
        kind, gen, expires, fp = r["kind"], r["generation"], r["expires"], r["fingerprint"]
        print(f"{kind:<16} {gen:>3}  {expires:<25} {leaves:<25} {fp}")
    return 0


def _server(args: argparse.Namespace) -> int:
    """The control plane; runs until SIGTERM or Ctrl-C."""
    import signal
    import threading

    from ca import keystore
    from control.server import ControlPlane

    data_dir = common.data_dir(args)
    store = "" if args.store == "file" else args.store
    if args.registry == "k8s":
        if store:
            print("meshctl: --registry k8s reads resources from the API server: no --store",
                  file=sys.stderr)  # fmt: skip
            return 2
        store = f"k8s:{args.kubeconfig or ''}"
    try:
        server = ControlPlane(
            data_dir, args.listen, store=store, consul_token=args.consul_token,
            http_listen="" if args.http_listen == "off" else args.http_listen,
            otlp_listen="" if args.otlp_listen == "off" else args.otlp_listen,
        )  # fmt: skip
        server.start()
    except ValueError as exc:
        print(f"meshctl: --store: {exc}", file=sys.stderr)
        return 2
    except (keystore.KeystoreError, ConfigError) as exc:
        print(f"meshctl: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    host = args.listen.rpartition(":")[0]
    reach = "127.0.0.1" if host in ("0.0.0.0", "[::]", "") else host
    common.write_context(f"{reach}:{server.port}", data_dir)
    http = f"; /metrics on port {server.http.port}" if server.http is not None else ""
    if server.otlp_port:
        http += f"; OTLP traces in on port {server.otlp_port} (meshctl traces)"
    logging.getLogger("weft.server").info(
        "control plane on %s:%d (identity, admin; CA in %s; resources in %s%s)",
        host, server.port, keystore.ca_dir(data_dir), store or data_dir / "resources.json", http,
    )  # fmt: skip
    stop.wait()
    server.stop()
    return 0


def _edge_in_mesh(args: argparse.Namespace) -> int:
    """The edge as a mesh workload: its Gateways and routes come from the control plane and
    it reaches services over mTLS with its own identity (default `edge`)."""
    from sidecar.modes.sidecar import SidecarOptions

    token = _join_token(args)
    if not token or not (args.ca_file or args.ca_fingerprint):
        print("meshctl: joining a mesh needs --token (or --token-file, WEFT_TOKEN) and "
              "--ca-file or --ca-fingerprint", file=sys.stderr)  # fmt: skip
        return 2
    opts = SidecarOptions(
        service=args.service, namespace=args.namespace, app_port=1,
        control_plane=args.control_plane, token=token, ca_file=args.ca_file,
        ca_fingerprint=args.ca_fingerprint, inbound_address="127.0.0.1", inbound_port=0,
        outbound_port=0, admin_port=args.admin_port, gateway=True,
        trace=telemetry.trace_options(args), trust_bundle=args.trust_bundle,
        ratelimit_redis=args.ratelimit_redis, ratelimit_fail_closed=args.ratelimit_fail_closed,
        ingress=_ingress_listeners(args),
    )  # fmt: skip
    return _run_sidecar(opts, args.access_log)


def _ingress_listeners(args: argparse.Namespace) -> IngressListeners:
    from sidecar.config.ingress import IngressListeners

    return IngressListeners(args.ingress_address, args.ingress_http_port, args.ingress_https_port)


def _sidecar(args: argparse.Namespace) -> int:
    from sidecar.modes.sidecar import SidecarOptions

    token = _join_token(args)
    if not token:
        print("meshctl: a join token is needed (--token, --token-file or WEFT_TOKEN)",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.discovery:
        from sidecar.discovery.consul import parse_url

        try:
            parse_url(args.discovery, token=args.consul_token or "")
        except ValueError as exc:
            print(f"meshctl: --discovery: {exc}", file=sys.stderr)
            return 2
    opts = SidecarOptions(
        service=args.service, namespace=args.namespace, version=args.version,
        app_port=args.app_port, control_plane=args.control_plane, token=token,
        ca_file=args.ca_file, ca_fingerprint=args.ca_fingerprint,
        inbound_address=args.inbound_address, inbound_port=args.inbound_port,
        outbound_port=args.outbound_port, protocol=args.protocol, advertise=args.advertise,
        admin_port=args.admin_port, files=tuple(args.file or ()),
        default_allow=args.default_policy == "allow",
        upstreams=tuple(_upstream(u) for u in args.upstream or ()),
        calls=tuple(c for text in args.calls or () for c in text.split(",") if c),
        admin_address=args.admin_address, discovery=args.discovery,
        consul_token=args.consul_token or "", trace=telemetry.trace_options(args),
        intercept=args.intercept, outbound_policy=args.outbound_policy,
    )  # fmt: skip
    return _run_sidecar(opts, args.access_log)


def _join_token(args: argparse.Namespace) -> str:
    """--token, else the file --token-file names (a mounted secret), else WEFT_TOKEN."""
    if args.token:
        return str(args.token)
    if args.token_file:
        try:
            return Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CliError(f"--token-file: {exc}") from None
    return os.environ.get("WEFT_TOKEN", "")


def _run_sidecar(opts: SidecarOptions, access_log: str) -> int:
    from sidecar.identity.svid import IdentityError
    from sidecar.modes.sidecar import SidecarServer

    sink = telemetry.access_log_sink(access_log)
    try:
        return _run_trio(SidecarServer(opts, access_log=sink).run)
    except IdentityError as exc:
        print(f"meshctl: cannot get an identity: {exc}", file=sys.stderr)
        return 1


def _upstream(text: str) -> tuple[str, int]:
    """`orders:9191` → ("orders", 9191)."""
    name, _, port = text.partition(":")
    if not name or not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"meshctl: --upstream {text!r}: expected SERVICE:PORT")
    return name, int(port)


def _token(args: argparse.Namespace) -> int:
    import datetime

    from ca import keystore, tokens
    from ca.spiffe import InvalidSpiffeId, SpiffeId

    now = datetime.datetime.now(datetime.UTC)
    data_dir = common.data_dir(args)
    try:
        ttl = _duration(args.ttl)
        ca = keystore.load(data_dir, now)
        identity = SpiffeId(ca.trust_domain, args.namespace, args.service)
        token = tokens.create(keystore.token_key(data_dir), identity, now=now, ttl=ttl)
    except (keystore.KeystoreError, InvalidSpiffeId, ValueError) as exc:
        print(f"meshctl: {exc}", file=sys.stderr)
        return 1
    # only the token on stdout: `WEFT_TOKEN=$(meshctl token create orders)` works
    until = (now + ttl).isoformat(timespec="seconds")
    print(f"join token for {identity.uri}, valid until {until}:", file=sys.stderr)
    if args.output == "secret":  # what `meshctl inject k8s` mounts: | kubectl apply -f -
        from mesh_ctl.inject.install import token_secret

        print(json.dumps(token_secret(args.service, args.namespace, token), indent=2))
    else:
        print(token)
    return 0


def _duration(text: str) -> datetime.timedelta:
    """`90s`, `30m`, `1h`, `7d` (a bare number is seconds)."""
    import datetime

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise ValueError(f"{text!r} is not a duration like 90s, 30m, 1h") from None
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return datetime.timedelta(seconds=seconds)


def _version(args: argparse.Namespace) -> int:
    if args.output == "json":
        print(json.dumps({"version": __version__, "build": BUILD}))
    else:
        print(f"meshctl {__version__} ({BUILD})")
    return 0


def _context(args: argparse.Namespace) -> int:
    """The control plane and data dir admin verbs use, and where each comes from."""
    saved = common.read_context()
    server = common.server_address(args)
    ddir = common.data_dir(args)
    doc = {"server": server, "data_dir": str(ddir), "context_file": str(common.context_path()),
           "saved": saved}  # fmt: skip
    if args.output == "json":
        print(json.dumps(doc, indent=2))
        return 0
    print(f"server    {server}\ndata dir  {ddir}")
    where = common.context_path()
    print(f"(saved by the last `meshctl up` or `meshctl server` in {where}; flags, "
          "WEFT_SERVER and WEFT_DATA_DIR override it)" if saved else
          f"(no saved context in {where}: defaults, flags and WEFT_* variables)")  # fmt: skip
    return 0


# Commands defined here; the admin verbs (apply, shift, top, up, …) live in modules of their
# own, registered only when the command line may name one of them.
LONG_RUNNING = ("edge", "sidecar", "server")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """`command`: the one the command line names, when known before parsing. A process
    that runs beside every instance (`sidecar`, `edge`, `server`) then skips importing
    the admin verbs' modules, a megabyte of resident memory it would never use."""
    parser = argparse.ArgumentParser(
        prog="meshctl", description="Weft service mesh and edge gateway"
    )
    levels = ("debug", "info", "warning", "error")
    parser.add_argument("--log-level", default=argparse.SUPPRESS, choices=levels)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    edge = sub.add_parser("edge", help="run the edge gateway from YAML files")
    edge.add_argument("--log-level", choices=levels, default=argparse.SUPPRESS)
    edge.add_argument(
        "-f",
        "--file",
        action="append",
        metavar="PATH",
        help="YAML file or directory of them; repeat for more",
    )
    mesh = edge.add_argument_group(
        "in a mesh (instead of -f): Gateways and routes from the control plane"
    )
    mesh.add_argument("--control-plane", "--server", dest="control_plane", metavar="HOST:PORT")
    mesh.add_argument("--token", help="join token (or WEFT_TOKEN) for the edge's identity")
    mesh.add_argument("--token-file", metavar="PATH", help="read the join token from a file")
    mesh.add_argument("--ca-file", help="the mesh's root bundle (PEM)")
    mesh.add_argument("--ca-fingerprint", metavar="sha256:HEX")
    mesh.add_argument("--service", default="edge", help="the edge's service identity")
    mesh.add_argument("--namespace", default="default")
    edge.add_argument(
        "--gateway-class",
        default="weft",
        help="serve Gateways of this gatewayClassName (and those without one)",
    )
    ingress = edge.add_argument_group("Kubernetes Ingresses in the files (class weft)")
    ingress.add_argument("--ingress-address", default="0.0.0.0", metavar="ADDRESS")
    ingress.add_argument("--ingress-http-port", type=int, default=80, metavar="PORT")
    ingress.add_argument("--ingress-https-port", type=int, default=443, metavar="PORT")
    edge.add_argument(
        "--trust-bundle",
        metavar="PATH",
        help="CA certificates (PEM) to trust, besides the system's, for HTTPS the edge calls "
        "itself (remote JWKS)",
    )
    edge.add_argument(
        "--ratelimit-redis",
        metavar="URL",
        default=os.environ.get("WEFT_RATELIMIT_REDIS"),
        help="the Redis where Global rate limits count, shared by every edge that names it: "
        "redis://[:PASSWORD@]HOST[:PORT][/DB] or rediss:// (or WEFT_RATELIMIT_REDIS)",
    )
    edge.add_argument(
        "--ratelimit-fail-closed",
        action="store_true",
        help="refuse (503) requests a Global limit counts while Redis cannot answer; by "
        "default they pass",
    )
    edge.add_argument("--admin-address", default="127.0.0.1")
    edge.add_argument("--admin-port", type=int, default=15000)
    edge.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N|auto",
        help="edge processes sharing every listener (auto: one per core); one admin port "
        "sums their metrics",
    )
    edge.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by --workers
    telemetry.add_arguments(edge)
    edge.add_argument(
        "--max-header-bytes",
        type=int,
        default=65536,
        help="request line plus headers larger than this get 431",
    )
    edge.add_argument(
        "--max-request-body-bytes",
        type=int,
        default=0,
        help="request bodies larger than this get 413 (0: no limit; bodies stream)",
    )
    edge.add_argument(
        "--idle-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="close a downstream connection with no I/O for this long",
    )
    edge.add_argument(
        "--header-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="close a connection whose request head takes longer than this",
    )
    edge.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="a request body gets this long plus a second per --min-body-rate bytes, then 408 "
        "(0: no limit; gRPC streams are exempt)",
    )
    edge.add_argument(
        "--min-body-rate",
        type=int,
        default=500,
        metavar="BYTES_PER_S",
        help="the rate a request body must keep after --body-timeout (0: only the timeout)",
    )
    edge.add_argument(
        "--max-connections-per-client",
        type=int,
        default=0,
        metavar="N",
        help="connections one client address may hold open; more are closed (0: no limit)",
    )
    edge.add_argument(
        "--max-requests-per-client",
        type=int,
        default=0,
        metavar="N",
        help="requests one client address may have in flight; more get 429 (0: no limit)",
    )
    edge.add_argument(
        "--merge-slashes",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="read // in a path as / before routing and authorization",
    )
    edge.add_argument(
        "--escaped-slashes",
        choices=("reject", "keep", "decode"),
        default="reject",
        help="%%2F and %%5C in a path: refuse (400), forward as they are, or read as / first",
    )
    edge.add_argument(
        "--tls-handshake-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="close a connection to an HTTPS port that has not finished its handshake",
    )
    edge.add_argument(
        "--detect-timeout",
        type=float,
        default=0.3,
        metavar="SECONDS",
        help="on weft.dev/Detect listeners, relay a silent client as opaque TCP after this",
    )
    edge.add_argument(
        "--upgrade",
        default="websocket",
        metavar="TOKEN[,TOKEN]",
        help="Upgrade protocols passed through to upstreams (others are ignored)",
    )
    edge.add_argument(
        "--trusted-hops",
        type=_hops,
        default=0,
        metavar="N",
        help="proxies in front of the edge whose X-Forwarded-For entries are believed when "
        "policies judge the client's address (default 0: the connection's peer)",
    )
    edge.add_argument(
        "--drain-timeout",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="on SIGTERM, how long requests in flight may take before the process exits",
    )
    edge.set_defaults(func=_edge)

    ca = sub.add_parser("ca", help="the mesh's certificate authority")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True, metavar="COMMAND")
    for name, text in (
        ("init", "create a root (10 y) and an intermediate (1 y), ECDSA P-256"),
        ("show", "roots, intermediate, fingerprints and expiry"),
        ("rotate", "new root and intermediate; the old root stays trusted until its leaves expire"),
    ):
        p = ca_sub.add_parser(name, help=text)
        p.add_argument("--data-dir", help="default: $WEFT_DATA_DIR or ~/.weft")
        p.add_argument("-o", "--output", choices=("table", "json"), default="table")
        if name == "init":
            p.add_argument("--trust-domain", default="weft.local")
        p.set_defaults(func=_ca)

    sc = sub.add_parser("sidecar", help="run a sidecar beside one service instance")
    sc.add_argument("--log-level", choices=levels, default=argparse.SUPPRESS)
    sc.add_argument("--service", required=True)
    sc.add_argument("--namespace", default="default")
    sc.add_argument("--version", default="")
    sc.add_argument("--app-port", type=int, required=True, help="the local app's port")
    sc.add_argument(
        "--control-plane", "--server", dest="control_plane", default="127.0.0.1:15010",
        metavar="HOST:PORT",
    )  # fmt: skip
    sc.add_argument("--token", help="join token (or WEFT_TOKEN); `meshctl token create`")
    sc.add_argument("--token-file", metavar="PATH", help="read the join token from a file")
    trust = sc.add_mutually_exclusive_group(required=True)
    trust.add_argument("--ca-file", help="the mesh's root bundle (PEM)")
    trust.add_argument("--ca-fingerprint", metavar="sha256:HEX", help="pin the root instead")
    sc.add_argument("--inbound-address", default="0.0.0.0")
    sc.add_argument("--inbound-port", type=int, default=15006)
    sc.add_argument("--outbound-port", type=int, default=15001, help="where the app calls out")
    sc.add_argument(
        "--protocol", choices=("HTTP", "HTTP2", "GRPC", "TCP"), default="HTTP",
        help="what the app speaks (how peers and this sidecar talk to it)",
    )  # fmt: skip
    sc.add_argument(
        "--advertise", default="", metavar="ADDRESS",
        help="the address peers reach the inbound port at (default: the inbound address, "
        "or when it is 0.0.0.0 the address this host reaches the control plane from)",
    )  # fmt: skip
    sc.add_argument(
        "--admin-address",
        default="127.0.0.1",
        help="where /ready, /metrics… listen (0.0.0.0 when Consul checks from afar)",
    )
    sc.add_argument("--admin-port", type=int, default=15000)
    telemetry.add_arguments(sc)
    sc.add_argument(
        "--discovery", default="", metavar="consul://HOST:PORT",
        help="register this instance with that Consul agent while ready (TLS and token from "
        "CONSUL_HTTP_SSL, CONSUL_CACERT, CONSUL_HTTP_TOKEN…)",
    )  # fmt: skip
    sc.add_argument("--consul-token", help="ACL token for Consul (default: CONSUL_HTTP_TOKEN)")
    sc.add_argument(
        "--upstream", action="append", metavar="SERVICE:PORT",
        help="a local port (127.0.0.1) that tunnels any protocol to SERVICE over mTLS",
    )  # fmt: skip
    sc.add_argument(
        "--intercept", action="store_true",
        help="serve connections `meshctl init` redirected to the outbound port by the address "
        "the app dialled (transparent interception)",
    )  # fmt: skip
    sc.add_argument(
        "--outbound-policy", choices=("allow-any", "registry-only"), default="allow-any",
        help="intercepted connections to addresses outside the mesh: relayed as they are, or "
        "refused",
    )  # fmt: skip
    sc.add_argument(
        "--calls", action="append", metavar="SERVICE[,SERVICE…]",
        help="the services the app calls (NAME or NAMESPACE/NAME): the control plane sends "
        "only their configuration, not the whole mesh's (default: every service)",
    )  # fmt: skip
    sc.add_argument(
        "--default-policy", choices=("allow", "deny"), default="allow",
        help="for services that no ALLOW AuthorizationPolicy names",
    )  # fmt: skip
    sc.add_argument(
        "-f", "--file", action="append", metavar="PATH",
        help="outbound listeners, routes and peer sidecars, instead of the control plane's",
    )  # fmt: skip
    sc.set_defaults(func=_sidecar)

    server = sub.add_parser("server", help="run the control plane")
    server.add_argument("--data-dir", help="default: $WEFT_DATA_DIR or ~/.weft")
    server.add_argument("--listen", default="127.0.0.1:15010", help="gRPC API address")
    server.add_argument(
        "--http-listen", default="127.0.0.1:15014", metavar="HOST:PORT",
        help="/healthz and /metrics (Prometheus); off: none",
    )  # fmt: skip
    server.add_argument(
        "--otlp-listen", default="off", metavar="HOST:PORT",
        help="receive spans over OTLP/gRPC there and keep the recent ones for "
        "`meshctl traces` (default: off)",
    )  # fmt: skip
    server.add_argument(
        "--store", default="file", metavar="file|consul://HOST:PORT[/PREFIX]",
        help="where resources live: the data dir, or Consul KV (replicas share it; endpoints "
        "then come from Consul's health checks)",
    )  # fmt: skip
    server.add_argument("--consul-token", default="", help="default: CONSUL_HTTP_TOKEN")
    server.add_argument(
        "--registry", choices=("builtin", "k8s"), default="builtin",
        help="k8s: Services, EndpointSlices, routes and policies from the Kubernetes API "
        "server (list + watch; kubectl apply them), sidecars still register here",
    )  # fmt: skip
    server.add_argument(
        "--kubeconfig", default="", metavar="PATH",
        help="--registry k8s outside a pod: the cluster of this kubeconfig's current context",
    )  # fmt: skip
    server.set_defaults(func=_server)

    token = sub.add_parser("token", help="join tokens for new sidecars")
    token_sub = token.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    create = token_sub.add_parser("create", help="a token for one service identity")
    create.add_argument("service")
    create.add_argument("--namespace", default="default")
    create.add_argument("--ttl", default="1h", help="how long it is valid (default 1h)")
    create.add_argument("--data-dir", help="default: $WEFT_DATA_DIR or ~/.weft")
    create.add_argument(
        "-o", "--output", choices=("token", "secret"), default="token",
        help="secret: a Kubernetes Secret weft-token-SERVICE holding it (meshctl inject k8s)",
    )  # fmt: skip
    create.set_defaults(func=_token)

    if command not in LONG_RUNNING:
        from mesh_ctl import init_cli, inject_cli, mesh_cli, resources_cli, traces_cli, up

        init_cli.register(sub)
        inject_cli.register(sub)
        resources_cli.register(sub)
        mesh_cli.register(sub)
        traces_cli.register(sub)
        up.register(sub)

    version = sub.add_parser("version", help="print the version")
    version.add_argument("-o", "--output", choices=("text", "json"), default="text")
    version.set_defaults(func=_version)
    ctx = sub.add_parser("context", help="show which mesh admin verbs talk to")
    common.add_server_arguments(ctx)
    ctx.add_argument("-o", "--output", choices=("text", "json"), default="text")
    ctx.set_defaults(func=_context)
    return parser


def _command(argv: list[str]) -> str | None:
    """The command a command line names (after a top-level `--log-level LEVEL`)."""
    if argv[:1] == ["--log-level"]:
        argv = argv[2:]
    elif argv[:1] and argv[0].startswith("--log-level="):
        argv = argv[1:]
    return argv[0] if argv else None


def main(argv: Sequence[str] | None = None) -> int:
    # grpc's C core logs to stderr on its own (`E1204 … add_port.cc … Failed to bind`);
    # what it reports reaches the user as meshctl's one-line errors instead
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    given = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_command(given)).parse_args(given)
    args.argv = given  # what --workers runs again
    logging.basicConfig(
        level=getattr(args, "log_level", os.environ.get("WEFT_LOG_LEVEL", "info")).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request at INFO (each Consul blocking query); its errors reach us
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"meshctl: configuration error: {exc}", file=sys.stderr)
        return 1
    except CliError as exc:
        print(f"meshctl: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"meshctl: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
