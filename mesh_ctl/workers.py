"""`meshctl edge --workers N`: N edge processes on every listener, one admin port.

Theory of operation. This process (the supervisor) proxies nothing. It checks the
configuration and that its ports are free, then runs N copies of the same `meshctl edge`
command as workers, each binding every listener with SO_REUSEPORT (the kernel spreads
connections over them) and its admin listener on a private port. It owns what must happen
once: the admin port (/metrics sums the workers', /ready is all of them ready), watching
the files (a change is checked here, new ports are checked free, then every worker gets
SIGHUP), SIGTERM (every worker drains; this one exits when they have) and restarting a
worker that died. A worker whose supervisor is gone (its stdin reaches EOF) drains and
exits. Workers keep their own state: local rate-limit buckets and per-client connection
counts are per worker (docs/edge.md), Global rate limits are shared through Redis.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import trio

from mesh_ctl.ports import free_port
from sidecar.admin import AdminState, serve_admin
from sidecar.config.loader import FileStamp, load_snapshot
from sidecar.config.model import ListenerKey
from sidecar.config.snapshot import Snapshot
from sidecar.errors import ConfigError
from sidecar.observe.merge import merge_metrics
from sidecar.observe.metrics import Metrics
from sidecar.transport.listen import accept_loop, open_listener

log = logging.getLogger("weft.workers")

RESTART_S = (0.5, 1.0, 2.0, 5.0, 10.0)  # waits before restarting a worker that died
STABLE_S = 30.0  # a worker that ran this long starts the backoff over
FETCH_TIMEOUT_S = 2.0
READY_POLL_S = 0.25


@dataclass
class Worker:
    index: int
    admin_port: int
    proc: trio.Process | None = None
    failures: int = 0  # deaths in a row, each after less than STABLE_S
    ready: bool = False  # its /ready answered 200 at the last look


class Supervisor:
    def __init__(
        self, argv: Sequence[str], count: int, paths: Sequence[str], *, gateway_class: str,
        admin_address: str, admin_port: int, drain_timeout_s: float,
        watch_interval_s: float = 1.0,
    ) -> None:  # fmt: skip
        self.argv = list(argv)  # the `meshctl edge …` arguments, run by every worker
        self.paths = list(paths)
        self.gateway_class = gateway_class
        self.admin_address = admin_address
        self.admin_port = admin_port
        self.drain_timeout_s = drain_timeout_s
        self.watch_interval_s = watch_interval_s
        self.workers = [Worker(i, free_port()) for i in range(count)]
        self.metrics = Metrics()  # the supervisor's own: reloads it refused, restarts
        self.listeners: set[ListenerKey] = set()
        self.stamp = FileStamp(())
        self.sources: tuple[str, ...] = ()
        self.stopping = trio.Event()

    # -- configuration --------------------------------------------------------------------
    def check(self) -> Snapshot:
        """Load the files (ConfigError as `meshctl edge` would print it) and make sure each
        listener not open yet is free: SO_REUSEPORT would otherwise share a port with
        another process that listens there with it."""
        snap = load_snapshot(self.paths, version=1, gateway_class=self.gateway_class)
        for key in snap.routers:
            if key not in self.listeners:
                try:
                    open_listener(key.address, key.port).close()
                except OSError as exc:
                    raise ConfigError(str(exc.strerror)) from None
        self.sources = snap.sources
        self.stamp = FileStamp.of(self.paths, snap.sources)
        return snap

    def reload(self) -> None:
        try:
            snap = self.check()
        except ConfigError as exc:
            self.metrics.inc("weft_config_reload_failures_total")
            log.error("configuration rejected, the workers keep theirs: %s", exc)
            return
        self.listeners = set(snap.routers)
        self.signal(signal.SIGHUP)

    def signal(self, signum: int) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                w.proc.send_signal(signum)

    # -- running --------------------------------------------------------------------------
    async def run(self) -> None:
        self.listeners = set(self.check().routers)
        try:
            admin = open_listener(self.admin_address, self.admin_port)
        except OSError as exc:
            raise ConfigError(str(exc.strerror), source="admin") from None
        state = AdminState(
            dump=dict, metrics=self.metrics, drain=lambda: self.signal(signal.SIGTERM),
            ready=self.ready_now, remote=self.remote,
        )  # fmt: skip
        log.info("%d workers on %d listener port(s); admin on %s:%d", len(self.workers),
                 len(self.listeners), self.admin_address, admin.getsockname()[1])  # fmt: skip
        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept_loop, admin, partial(serve_admin, state), nursery)
            nursery.start_soon(self._watch_files)
            nursery.start_soon(self._watch_signals)
            nursery.start_soon(self._watch_ready)
            async with trio.open_nursery() as workers:
                for w in self.workers:
                    workers.start_soon(self._keep, w)
            nursery.cancel_scope.cancel()  # every worker has exited

    async def _keep(self, w: Worker) -> None:
        """Run worker `w`, again after it dies, until the supervisor stops."""
        command = [sys.executable, "-m", "mesh_ctl", *self.argv, "--workers", "1",
                   "--worker-index", str(w.index), "--admin-address", "127.0.0.1",
                   "--admin-port", str(w.admin_port)]  # fmt: skip
        # Its own session: Ctrl-C reaches the supervisor alone, which drains the workers.
        run = partial(
            trio.run_process, command, stdin=subprocess.PIPE, check=False, start_new_session=True
        )
        while not self.stopping.is_set():
            began = trio.current_time()
            w.ready = False
            async with trio.open_nursery() as nursery:
                w.proc = await nursery.start(run)
            if self.stopping.is_set():
                return
            w.failures = 0 if trio.current_time() - began > STABLE_S else w.failures + 1
            delay = RESTART_S[min(w.failures, len(RESTART_S)) - 1] if w.failures else 0.0
            self.metrics.inc("weft_worker_restarts_total")
            log.error("worker %d exited (status %s); starting it again in %gs", w.index,
                      w.proc.returncode, delay)  # fmt: skip
            with trio.move_on_after(delay):
                await self.stopping.wait()

    async def _watch_files(self) -> None:
        while self.watch_interval_s > 0:
            await trio.sleep(self.watch_interval_s)
            if FileStamp.of(self.paths, self.sources) != self.stamp:
                log.info("configuration files changed; reloading the workers")
                self.reload()

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as sigs:
            async for signum in sigs:
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: reloading the workers")
                    self.reload()
                    continue
                log.info("%s: the workers drain", signal.Signals(signum).name)
                self.stopping.set()
                self.signal(signal.SIGTERM)
                break
        await trio.sleep(self.drain_timeout_s + 5)  # cancelled once every worker is gone
        self.signal(signal.SIGKILL)

    async def _watch_ready(self) -> None:
        """Ask each worker's /ready (the supervisor is ready when all of them are)."""
        while True:
            for w in self.workers:
                ready = False  # unless it answers, in time
                with trio.move_on_after(FETCH_TIMEOUT_S), contextlib.suppress(OSError):
                    ready = self._running(w) and await _get(w.admin_port, "/ready") == "ready\n"
                w.ready = ready
            await trio.sleep(READY_POLL_S)

    # -- admin ----------------------------------------------------------------------------
    def ready_now(self) -> bool:
        return not self.stopping.is_set() and all(w.ready for w in self.workers)

    @staticmethod
    def _running(w: Worker) -> bool:
        return w.proc is not None and w.proc.returncode is None

    async def remote(self, path: str) -> str:
        """/metrics: every worker's, summed; /config_dump: the first worker's (they all
        run the same files); /cache/purge: done by every worker, the URLs they dropped summed."""
        if path.startswith("/cache/purge"):
            purged = 0

            async def purge(w: Worker) -> None:
                nonlocal purged
                with trio.move_on_after(FETCH_TIMEOUT_S), contextlib.suppress(OSError, ValueError):
                    answer = json.loads(await _get(w.admin_port, path, "POST"))
                    purged += answer["purged"]  # after the await: tasks share the total

            async with trio.open_nursery() as nursery:
                for w in self.workers:
                    nursery.start_soon(purge, w)
            return json.dumps({"purged": purged}) + "\n"
        if path != "/metrics":
            with trio.move_on_after(FETCH_TIMEOUT_S):
                with contextlib.suppress(OSError):
                    return await _get(self.workers[0].admin_port, path)
            return '{"error": "worker 0 did not answer"}\n'
        texts: list[str] = []

        async def one(w: Worker) -> None:  # a worker starting again is left out
            with trio.move_on_after(FETCH_TIMEOUT_S), contextlib.suppress(OSError):
                texts.append(await _get(w.admin_port, "/metrics"))

        async with trio.open_nursery() as nursery:
            for w in self.workers:
                nursery.start_soon(one, w)
        self.metrics.gauges["weft_workers"] = sum(map(self._running, self.workers))
        return merge_metrics([*texts, self.metrics.render()])


async def _get(port: int, path: str, method: str = "GET") -> str:
    """The body of a request to a worker's admin listener."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"{method} {path} HTTP/1.0\r\nHost: admin\r\n\r\n".encode())
        data = bytearray()
        while chunk := await stream.receive_some(65536):
            data += chunk
    return bytes(data).partition(b"\r\n\r\n")[2].decode("utf-8", "replace")
