"""A sidecar's registration with its local Consul agent, for as long as it serves.

Registers once the sidecar is ready (with an HTTP check on its own `/ready`, initially
passing), retries with backoff while the agent is unreachable, and checks every
`recheck_s` that the agent still has it (a dev agent or a wiped data dir forgets its
services). On drain it deregisters while the sidecar still serves, so callers stop choosing
it before it goes; the sidecar waits for that (`done`) before it exits.
"""

from __future__ import annotations

import logging
import random

import trio

from sidecar.discovery.consul import ConsulError, Registration
from sidecar.discovery.consul_client import BACKOFF_S, ConsulClient

log = logging.getLogger("weft.consul")

RECHECK_S = 30.0
DEREGISTER_TIMEOUT_S = 5.0


class ConsulRegistration:
    def __init__(self, client: ConsulClient, reg: Registration) -> None:
        self.client = client
        self.reg = reg
        self.registered = trio.Event()  # the agent accepted it (first time)
        self.done = trio.Event()  # deregistered, or gave up trying, after drain
        self._draining = trio.Event()

    def drain(self) -> None:
        self._draining.set()

    async def run(self, recheck_s: float = RECHECK_S) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keep, recheck_s)
                await self._draining.wait()
                nursery.cancel_scope.cancel()
            with trio.move_on_after(DEREGISTER_TIMEOUT_S):
                try:
                    await self.client.deregister(self.reg.id)
                    log.info("deregistered %s from Consul", self.reg.id)
                except ConsulError as exc:  # its check fails now anyway (/ready is 503)
                    log.warning("could not deregister %s: %s", self.reg.id, exc)
        finally:
            self.done.set()
            with trio.CancelScope(shield=True):
                await self.client.aclose()

    async def _keep(self, recheck_s: float) -> None:
        failures = 0
        present = False
        while True:
            try:
                if not present or not await self.client.registered(self.reg.id):
                    if present:
                        log.warning("the Consul agent lost %s; registering again", self.reg.id)
                    await self.client.register(self.reg)
                    log.info(
                        "registered %s with Consul (%s:%d)",
                        self.reg.id, self.reg.address, self.reg.port,
                    )  # fmt: skip
                    present = True
                    self.registered.set()
                failures = 0
                await trio.sleep(recheck_s)
            except ConsulError as exc:
                present = False
                delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                failures += 1
                log.warning("Consul registration of %s: %s (retrying)", self.reg.id, exc)
                await trio.sleep(delay * random.uniform(0.8, 1.2))
