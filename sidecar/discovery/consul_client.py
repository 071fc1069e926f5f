"""Consul's HTTP API over httpx (the I/O shell of discovery/consul.py).

httpx's AsyncClient runs on both trio (the sidecar) and asyncio (the control plane), so one
client serves both; py-consul's async flavour is asyncio-only. `watch` is the blocking-query
loop: it yields an answer only when it changed, rate-limits itself, and on errors keeps the
caller's last answer (it yields nothing) while it retries with backoff.

httpx loads only where Consul is configured: a sidecar without `--discovery consul://`
never imports it.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx

from sidecar.discovery.consul import (
    WAIT,
    CasConflict,
    ConsulConfig,
    ConsulError,
    ConsulRefused,
    KvEntry,
    Registration,
    next_index,
    parse_duration,
    parse_kv,
    txn_errors,
    txn_indexes,
)
from sidecar.errors import why

log = logging.getLogger("weft.consul")

BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
MIN_INTERVAL_S = 0.05  # between blocking requests: an unchanged answer must not spin


def tls_context(config: ConsulConfig) -> ssl.SSLContext | bool:
    if not config.tls:
        return True
    ctx = ssl.create_default_context(cafile=config.ca_file or None, capath=config.ca_path or None)
    if config.cert_file:
        ctx.load_cert_chain(config.cert_file, config.key_file or None)
    if not config.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class ConsulClient:
    def __init__(self, config: ConsulConfig, *, timeout_s: float = 10.0, wait: str = WAIT) -> None:
        self.config = config
        self.wait = wait  # how long Consul may hold a blocking query
        try:
            verify = tls_context(config)
        except (OSError, ssl.SSLError) as exc:
            raise ConsulError(f"Consul TLS settings: {exc}") from None
        self._http = httpx.AsyncClient(
            base_url=config.base_url,
            headers=config.headers(),
            verify=verify,
            timeout=httpx.Timeout(timeout_s),
            trust_env=False,  # Consul's own variables, not the HTTP proxy ones
        )
        self._extensions = {"sni_hostname": config.server_name} if config.server_name else {}

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        timeout_s: float | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> httpx.Response:
        try:
            resp = await self._http.request(
                method, path, params=params,
                content=None if body is None else json.dumps(body).encode(),
                timeout=httpx.USE_CLIENT_DEFAULT if timeout_s is None else timeout_s,
                extensions=self._extensions,
            )  # fmt: skip
        except httpx.HTTPError as exc:
            raise ConsulError(f"Consul at {self.config.base_url}: {why(exc)}") from None
        if resp.status_code not in ok:
            text = resp.text.strip()[:300]
            message = f"Consul {method} {path}: HTTP {resp.status_code}: {text}"
            raise ConsulRefused(message, resp.status_code)
        return resp

    async def blocking_get(self, path: str, params: dict[str, str], index: int) -> tuple[int, Any]:
        """One blocking query: (the next index, the JSON answer; None for a 404)."""
        params = dict(params)
        if index:
            params.update(index=str(index), wait=self.wait)
        # Consul holds the request up to `wait` plus wait/16 of jitter
        hold_s = parse_duration(self.wait) * 17 / 16 + 10.0
        resp = await self.call("GET", path, params=params, timeout_s=hold_s, ok=(200, 404))
        new = next_index(index, resp.headers.get("X-Consul-Index"))
        if resp.status_code == 404:
            return new, None
        try:
            return new, resp.json()
        except ValueError:
            raise ConsulError(f"Consul GET {path}: the answer is not JSON") from None

    async def watch(self, path: str, params: dict[str, str]) -> AsyncIterator[tuple[int, Any]]:
        """(index, answer) for each changed answer of a blocking query (None for a 404),
        forever. Errors are logged and retried with backoff; the caller keeps what it had
        (static stability)."""
        index, last, failures = 0, object(), 0
        while True:
            started = anyio.current_time()
            try:
                index, body = await self.blocking_get(path, params, index)
            except ConsulError as exc:
                delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                failures += 1
                log.warning("%s (retrying in %.1fs)", exc, delay)
                await anyio.sleep(delay * random.uniform(0.8, 1.2))
                index = 0
                continue
            failures = 0
            if body != last:
                last = body
                yield index, body
            elapsed = anyio.current_time() - started
            if elapsed < MIN_INTERVAL_S:
                await anyio.sleep(MIN_INTERVAL_S - elapsed)

    # -- agent ----------------------------------------------------------------------------
    async def register(self, reg: Registration) -> None:
        await self.call("PUT", "/v1/agent/service/register", body=reg.body())

    async def deregister(self, service_id: str) -> None:
        await self.call("PUT", f"/v1/agent/service/deregister/{_segment(service_id)}")

    async def registered(self, service_id: str) -> bool:
        """Whether the local agent still has the service (a dev agent forgets on restart)."""
        resp = await self.call("GET", f"/v1/agent/service/{_segment(service_id)}", ok=(200, 404))
        return resp.status_code == 200

    # -- KV -------------------------------------------------------------------------------
    async def kv_list(self, prefix: str, index: int = 0) -> tuple[int, list[KvEntry]]:
        index, body = await self.blocking_get(f"/v1/kv/{prefix}/", {"recurse": "true"}, index)
        return index, [] if body is None else parse_kv(body)

    async def txn(self, ops: list[dict[str, Any]]) -> dict[str, int]:
        """Commit operations atomically: key -> new ModifyIndex; CasConflict if a check
        failed (nothing was written)."""
        resp = await self.call("PUT", "/v1/txn", body=ops, ok=(200, 409))
        try:
            body = resp.json()
        except ValueError:
            raise ConsulError("Consul PUT /v1/txn: the answer is not JSON") from None
        if resp.status_code == 409:
            raise CasConflict(f"Consul transaction rolled back: {txn_errors(body)}")
        return txn_indexes(body)


def _segment(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")
