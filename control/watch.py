"""`weft.config.v1.Config/Watch`: a sidecar's stream of snapshots, and its registration.

The sidecar opens the stream with `{"hello": {"session": TOKEN, "instance": {...}}}`: the
session token (from Identity.Sign, ca/tokens.py) proves its identity, and the instance must
be of that identity's service. The instance is registered (not ready) and the stream sends
`{"snapshot": {"version": G, "resources": [...]}}` whenever what this sidecar should have
changes (G is the control plane's generation); to a sidecar whose hello has `"deltas":
true`, only the first snapshot is whole and later ones are `{"delta": …}`s of what changed
(control/delta.py). The sidecar answers `{"ack": {"version":
G}}` once a snapshot is in force (its instance becomes ready: an endpoint for others) or
`{"nack": {"version": G, "error": "..."}}`; it sends `{"stats": {...}}` (its counters, for
`meshctl top`: control/top.py) while they change, `{"heartbeat": {}}` every few seconds
otherwise (both keep its registration alive) and `{"drain": {}}` when it drains (no longer
an endpoint). The stream's end deregisters the instance, except while the control plane
itself shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from pathlib import Path
from typing import Any

import grpc

from ca import keystore, tokens
from ca.spiffe import NAME
from control import api
from control.registry import Instance
from control.snapshot import ServiceKey
from control.state import ControlState, Subscriber
from control.top import parse_sample


class ConfigService:
    def __init__(self, state: ControlState, data_dir: Path) -> None:
        self.state = state
        self.data_dir = data_dir

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            api.CONFIG_SERVICE,
            {
                "Watch": grpc.stream_stream_rpc_method_handler(
                    self.watch, request_deserializer=api.decode, response_serializer=_encoded
                )
            },
        )

    async def watch(self, requests: Any, context: Any) -> None:
        loop = asyncio.get_running_loop()
        messages = requests.__aiter__()
        try:
            first = await anext(messages)
        except StopAsyncIteration:
            return
        sub = await self._hello(first, context)
        state = self.state
        state.connect(sub, loop.time())
        reader = asyncio.create_task(self._read(messages, sub))
        try:
            while not reader.done():
                changed = state.changed
                docs, message = state.snapshot(sub.view)
                changed_docs = docs is not sub.docs
                if changed_docs and sub.deltas and sub.docs is not None:
                    patch = state.delta(sub.view, sub.docs)
                    changed_docs, message = patch is not None, patch or message
                elif changed_docs:
                    changed_docs = docs != sub.docs
                if changed_docs:
                    sub.docs = docs
                    sub.sent = state.generation
                    sub.changed_at = state.changed_at
                    sub.answered.clear()
                    await context.write(message)
                    state.metrics.pushes.inc()
                    # The next push waits for this one's ACK (or NACK): a sidecar gets the
                    # changes that piled up meanwhile in one delta, at the pace it can take
                    # them, instead of a push per change while it is still busy.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(_either(sub.answered, reader), ANSWER_WAIT_S)
                else:  # nothing new for this sidecar: it is current at this generation too
                    if sub.acked == sub.sent:
                        state.current_at(sub, state.generation)
                    sub.sent = state.generation
                waiter = asyncio.ensure_future(changed.wait())
                await asyncio.wait((waiter, reader), return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                await _settle(state)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            state.disconnect(sub)

    async def _hello(self, message: Any, context: Any) -> Subscriber:
        try:
            hello = message["hello"]
            instance = Instance.from_json({**hello["instance"], "ready": False})
            session = str(hello["session"])
            calls = _calls(hello.get("calls"), instance.namespace)
        except (KeyError, TypeError, ValueError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad hello: {exc!r}")
        now = datetime.datetime.now(datetime.UTC)
        try:
            identity = tokens.verify(
                keystore.token_key(self.data_dir), session, now=now, use="session"
            )
        except tokens.TokenError as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        if (identity.namespace, identity.service) != (instance.namespace, instance.service):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{identity.uri} cannot register an instance of "
                f"{instance.namespace}/{instance.service}",
            )
        return Subscriber(
            instance=instance, identity_expires=str(hello.get("expires", ""))[:40],
            gateway=bool(hello.get("gateway", False)), deltas=hello.get("deltas") is True,
            calls=calls,
        )  # fmt: skip

    async def _read(self, messages: Any, sub: Subscriber) -> None:
        loop = asyncio.get_running_loop()
        state = self.state
        async for message in messages:
            if not isinstance(message, dict):
                continue
            if "ack" in message or "nack" in message:
                sub.answered.set()
            if "ack" in message:
                sub.error = ""
                version = int(message["ack"].get("version", 0))
                state.metrics.acks.inc()
                if version == sub.sent and sub.changed_at:
                    state.metrics.push_seconds.observe(time.monotonic() - sub.changed_at)
                    sub.changed_at = 0.0
                state.set_ready(sub, True, loop.time())
                state.current_at(sub, version)
            elif "nack" in message:
                sub.error = str(message["nack"].get("error", "rejected"))[:1000]
                state.metrics.nacks.inc()
                sub.changed_at = 0.0
            elif "stats" in message:
                sample = parse_sample(message["stats"], loop.time())
                if sample is not None:
                    state.sampled(sub, sample)
                state.heartbeat(sub, loop.time())
            elif "heartbeat" in message:
                state.heartbeat(sub, loop.time())
            elif "drain" in message:
                state.set_ready(sub, False, loop.time())


MAX_CALLS = 1000


def _calls(value: Any, namespace: str) -> frozenset[ServiceKey] | None:
    """A hello's `calls`: the services the sidecar calls, "NAMESPACE/NAME" or "NAME" (its
    own namespace); absent: every service. ValueError when malformed."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_CALLS:
        raise ValueError(f"calls: expected a list of at most {MAX_CALLS} service names")
    out = set()
    for item in value:
        ns, _, name = item.rpartition("/") if isinstance(item, str) else ("", "", "")
        if not name or not NAME.match(name) or (ns and not NAME.match(ns)):
            raise ValueError(f"calls: {item!r} is not a service name (NAME or NAMESPACE/NAME)")
        out.add((ns or namespace, name))
    return frozenset(out)


async def _either(answered: asyncio.Event, reader: asyncio.Task[None]) -> None:
    waiter = asyncio.ensure_future(answered.wait())
    try:
        await asyncio.wait((waiter, reader), return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


ANSWER_WAIT_S = 10.0  # a push unanswered for this long no longer holds the next one back
DEBOUNCE_S = 0.005  # a change is pushed once no other came for this long ...
DEBOUNCE_MAX_S = 0.2  # ... or this long after it, whichever is first


async def _settle(state: ControlState) -> None:
    """Let a burst of changes (a hundred sidecars registering at once) become one push
    instead of one per change: O(N) snapshots instead of O(N²). A lone change (a shift)
    waits only DEBOUNCE_S."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEBOUNCE_MAX_S
    while (left := deadline - loop.time()) > 0:
        changed = state.changed
        try:
            await asyncio.wait_for(changed.wait(), min(DEBOUNCE_S, left))
        except TimeoutError:
            return


def _encoded(message: bytes) -> bytes:
    """Snapshots are encoded once per service and generation (ControlState.snapshot)."""
    return message
