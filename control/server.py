"""`meshctl server`: the control plane's gRPC port (identity, admin, config watch), and its
HTTP port (/healthz, /metrics: control/metrics.py).

grpcio's asyncio server runs on its own event loop in a background thread (`start` returns
once it listens, `stop` drains it), so the CLI's main thread only waits for a signal and
tests can host a control plane beside trio. Identity.Sign is synchronous (CPU-bound signing)
and runs in grpcio's migration thread pool; admin and config handlers are coroutines on the
loop, which owns `ControlState`.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
from concurrent import futures
from pathlib import Path

import grpc

from ca import keystore
from ca.authority import LEAF_TTL
from ca.service import IdentityService, control_plane_credentials
from control import api
from control.admin import AdminService
from control.metrics import HttpPort
from control.state import ControlState
from control.store import ResourceFile
from control.traces import TraceStore, otlp_handler
from control.watch import ConfigService
from mesh_ctl.api import identity_pb2_grpc
from sidecar.discovery.consul import ConsulError, parse_url

log = logging.getLogger("weft.server")

CONSUL_START_S = 10.0  # how long start-up waits for Consul before serving the cached resources
KUBE_START_S = 10.0  # how long start-up waits for the API server's first lists
KUBE_READ_ONLY = (
    "this control plane reads its resources from the Kubernetes API server "
    "(--registry k8s): kubectl apply them there"
)


class ControlPlane:
    def __init__(
        self,
        data_dir: Path,
        listen: str,
        *,
        leaf_ttl: datetime.timedelta = LEAF_TTL,
        cert_ttl: datetime.timedelta = LEAF_TTL,
        store: str = "",
        consul_token: str = "",
        http_listen: str = "",
        otlp_listen: str = "",
    ) -> None:
        """`store`: "" keeps resources in the data dir; a consul:// URL (ValueError if
        malformed) keeps them in Consul KV and takes endpoints from Consul; "k8s:" (then a
        kubeconfig's path, or nothing in a pod) reads them from the Kubernetes API server.
        `http_listen`: where to serve /healthz and /metrics (HOST:PORT; "" for nowhere).
        `otlp_listen`:
        where to receive spans over OTLP/gRPC for `meshctl traces` ("" for nowhere)."""
        self.data_dir = data_dir
        self.kube = store.removeprefix("k8s:") if store.startswith("k8s:") else None
        self.consul = parse_url(store, token=consul_token) if store and self.kube is None else None
        self.listen = listen
        self.leaf_ttl = leaf_ttl
        self.cert_ttl = cert_ttl  # of the control plane's own serving certificate
        keystore.load(data_dir, datetime.datetime.now(datetime.UTC))  # refuses a bad CA up front
        self._renew_at = datetime.datetime.min.replace(tzinfo=datetime.UTC)
        self._initial = self._fetch_certificate()
        assert self._initial is not None
        self.admin_token = api.admin_token(data_dir, create=True)
        self.http_listen = http_listen
        self.http: HttpPort | None = None
        self.otlp_listen = otlp_listen
        self.otlp_port = 0
        self.traces = TraceStore() if otlp_listen else None
        self.port = 0
        self.grace_s = 5.0
        self.state: ControlState | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="control-plane", daemon=True)
        self.stopped = threading.Event()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def stop(self, grace_s: float = 5.0) -> None:
        if self.stopped.is_set():
            return
        self.grace_s = grace_s
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(grace_s + 5)
        self.stopped.set()

    def _fetch_certificate(self) -> grpc.ServerCertificateConfiguration | None:
        """A new serving certificate at 2/3 of the current one's life (grpcio asks before
        each handshake; None keeps the current one). Renewal also moves it to the newest
        intermediate after `meshctl ca rotate`."""
        now = datetime.datetime.now(datetime.UTC)
        if now < self._renew_at:
            return None
        try:
            key_pem, chain_pem = control_plane_credentials(self.data_dir, now, self.cert_ttl)
        except (keystore.KeystoreError, OSError, ValueError) as exc:
            if self._renew_at.year == 1:  # the first one: nothing to serve with
                raise
            log.error("cannot renew the control plane's certificate (retrying in 60 s): %s", exc)
            self._renew_at = now + datetime.timedelta(seconds=60)
            return None
        self._renew_at = now + self.cert_ttl * 2 / 3
        return grpc.ssl_server_certificate_configuration([(key_pem, chain_pem)])

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start(); the thread ends
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        background: list[asyncio.Task[None]] = []
        if self.kube is not None:
            self.state = state = await self._kube_state(background)
        elif self.consul is None:
            self.state = state = ControlState(self.data_dir, self._loop.time())
        else:
            self.state = state = await self._consul_state(background)
        if self.http_listen:
            try:
                self.http = HttpPort(self.http_listen, state.metrics.registry)
            except OSError as exc:
                raise keystore.KeystoreError(
                    f"cannot listen on {self.http_listen}: {exc}"
                ) from None
        try:
            await self._serve_grpc(state, background)
        finally:
            if self.http is not None:
                self.http.close()

    async def _serve_grpc(self, state: ControlState, background: list[asyncio.Task[None]]) -> None:
        assert self._stop is not None
        creds = grpc.dynamic_ssl_server_credentials(self._initial, self._fetch_certificate)
        with futures.ThreadPoolExecutor(max_workers=4) as pool:
            # grpc turns SO_REUSEPORT on by default: a second control plane on the same
            # address would start and share the clients (split brain). Refuse it instead.
            server = grpc.aio.server(migration_thread_pool=pool, options=[("grpc.so_reuseport", 0)])
            identity_pb2_grpc.add_IdentityServicer_to_server(  # type: ignore[no-untyped-call]
                IdentityService(self.data_dir, self.leaf_ttl), server
            )
            server.add_generic_rpc_handlers(
                (
                    AdminService(state, self.admin_token, self.traces).handler(),
                    ConfigService(state, self.data_dir).handler(),
                )
            )
            try:
                self.port = server.add_secure_port(self.listen, creds)
            except RuntimeError:  # grpc's "Failed to bind" says no more than this
                self.port = 0
            if self.port == 0:
                raise keystore.KeystoreError(
                    f"cannot listen on {self.listen}: address in use (another control plane?)"
                    " or not available"
                )
            otlp = await self._serve_otlp(pool) if self.otlp_listen else None
            await server.start()
            self._ready.set()
            background.append(asyncio.create_task(_expire_loop(state)))
            await self._stop.wait()
            for task in background:
                task.cancel()
            state.stopping = True  # the watches end now; their sidecars will be back
            if otlp is not None:
                await otlp.stop(0)
            await server.stop(self.grace_s)

    async def _serve_otlp(self, pool: futures.ThreadPoolExecutor) -> grpc.aio.Server:
        """OTLP/gRPC's TraceService on `otlp_listen`, plaintext as a collector's is."""
        server = grpc.aio.server(migration_thread_pool=pool, options=[("grpc.so_reuseport", 0)])
        assert self.traces is not None
        server.add_generic_rpc_handlers((otlp_handler(self.traces),))
        try:
            self.otlp_port = server.add_insecure_port(self.otlp_listen)
        except RuntimeError:
            self.otlp_port = 0
        if self.otlp_port == 0:
            raise keystore.KeystoreError(f"cannot listen on {self.otlp_listen}: address in use")
        await server.start()
        return server

    async def _consul_state(self, background: list[asyncio.Task[None]]) -> ControlState:
        """Resources from Consul KV (or, while Consul is unreachable, the last ones this
        replica read), kept current by a watch; endpoints from Consul's health checks."""
        from control.consul_endpoints import ConsulEndpoints
        from control.consul_store import ConsulResources
        from sidecar.discovery.consul_client import ConsulClient

        assert self.consul is not None and self._loop is not None
        client = ConsulClient(self.consul)
        kv = ConsulResources(client, ResourceFile(self.data_dir))
        resources = None
        try:
            async with asyncio.timeout(CONSUL_START_S):
                resources = await kv.load()
        except (ConsulError, TimeoutError) as exc:
            log.warning("Consul unreachable at start (%s); serving the cached resources", exc)
        state = ControlState(self.data_dir, self._loop.time(), consul=kv, resources=resources)
        background.append(asyncio.create_task(kv.watch(state.put_resources)))
        background.append(asyncio.create_task(ConsulEndpoints(client, state.put_endpoints).run()))
        return state

    async def _kube_state(self, background: list[asyncio.Task[None]]) -> ControlState:
        """Resources from the API server, listed before serving (at most KUBE_START_S)."""
        from control import kube

        assert self.kube is not None and self._loop is not None
        access = kube.from_kubeconfig(Path(self.kube)) if self.kube else kube.in_cluster()
        state = ControlState(self.data_dir, self._loop.time(), read_only=KUBE_READ_ONLY)
        watcher = kube.Watcher(access, state.put_resources)
        background.append(asyncio.create_task(watcher.run()))
        try:
            async with asyncio.timeout(KUBE_START_S):
                await watcher.synced.wait()
        except TimeoutError:
            log.warning("the API server has not answered for every kind yet; serving meanwhile")
        return state


async def _expire_loop(state: ControlState) -> None:
    """Remove instances whose sidecar stopped heartbeating (checked once a second)."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(1.0)
        for inst in state.expire(loop.time()):
            log.warning(
                "instance %s of %s/%s expired (no heartbeat)", inst.id, inst.namespace, inst.service
            )
