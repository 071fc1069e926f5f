"""`weft.admin.v1.Admin`: apply, get and delete resources (what `meshctl` calls).

Every call needs the admin token. A change is validated whole (control/store.py), saved to
disk, and only then put in force, so a restart never serves less than was acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from dataclasses import asdict
from typing import Any

import grpc

from control import api, top
from control.registry import Instance
from control.shift import check_weights, split_route
from control.state import ControlState
from control.traces import TraceStore
from sidecar.config.parse import Document
from sidecar.discovery.consul import ConsulError, ConsulRefused
from sidecar.errors import ConfigError


class AdminService:
    def __init__(self, state: ControlState, token: str, traces: TraceStore | None = None) -> None:
        self.state = state
        self.token = token
        self.traces = traces

    def handler(self) -> grpc.GenericRpcHandler:
        methods = {
            "Apply": self.apply, "Get": self.get, "Delete": self.delete,
            "Shift": self.shift, "Status": self.status, "Top": self.top,
            "Traces": self.list_traces,
        }  # fmt: skip
        return grpc.method_handlers_generic_handler(
            api.ADMIN_SERVICE,
            {
                name: grpc.unary_unary_rpc_method_handler(
                    fn, request_deserializer=api.decode, response_serializer=api.encode
                )
                for name, fn in methods.items()
            },
        )

    async def _authorize(self, context: Any) -> None:
        sent = dict(context.invocation_metadata() or ()).get("authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {self.token}".encode()):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "a valid admin token is needed (<data-dir>/admin.token or WEFT_ADMIN_TOKEN)",
            )

    async def apply(self, request: Any, context: Any) -> dict[str, Any]:
        await self._authorize(context)
        try:
            docs = [Document(d["data"], str(d["source"])) for d in request["documents"]]
        except (KeyError, TypeError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "documents: [{source, data}]")
        try:
            version, outcome = await self.state.apply(docs)
        except ConfigError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except ConsulError as exc:
            await _not_saved(context, exc)
        return {"version": version, "results": outcome}

    async def get(self, request: Any, context: Any) -> dict[str, Any]:
        await self._authorize(context)
        res = self.state.resources
        docs = res.select(
            str(request.get("kind", "")), request.get("namespace"), request.get("name")
        )
        return {"version": res.version, "documents": docs}

    async def delete(self, request: Any, context: Any) -> dict[str, Any]:
        await self._authorize(context)
        try:
            version = await self.state.delete(
                request["kind"], request.get("namespace") or "default", request["name"]
            )
        except KeyError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc.args[0]))
        except ConfigError as exc:  # resources that are not this control plane's to change
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except ConsulError as exc:
            await _not_saved(context, exc)
        return {"version": version}

    async def shift(self, request: Any, context: Any) -> dict[str, Any]:
        """Write the split, then (unless `wait` is false) hold the answer until every
        connected sidecar is current at the generation that carries it."""
        await self._authorize(context)
        state = self.state
        try:
            service = str(request["service"])
            namespace = str(request.get("namespace") or "default")
            weights = {str(k): int(v) for k, v in dict(request["weights"]).items()}
            if any(w < 0 for w in weights.values()):
                raise ValueError("weights cannot be negative")
            check_weights(service, weights, state.versions(namespace, service))
        except (KeyError, TypeError, ValueError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc).strip("'\""))
        existing = state.resources.docs.get(("HTTPRoute", namespace, service))
        route = split_route(existing, namespace, service, weights)
        try:
            version, _ = await state.apply([Document(route, f"meshctl shift {service}")])
        except ConfigError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except ConsulError as exc:
            await _not_saved(context, exc)
        generation = state.generation
        loop = asyncio.get_running_loop()
        start = loop.time()
        if request.get("wait", True):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(float(request.get("timeout_s", 30.0))):
                    while state.lagging(generation):
                        await state.progress.wait()
        lagging = state.lagging(generation)
        return {
            "version": version, "generation": generation, "seconds": loop.time() - start,
            "sidecars": len(state.registry.instances), "lagging": [_who(i) for i in lagging],
        }  # fmt: skip

    async def status(self, request: Any, context: Any) -> dict[str, Any]:
        await self._authorize(context)
        state = self.state
        rows = []
        for inst in sorted(state.registry.instances.values(),
                           key=lambda i: (i.namespace, i.service, i.version, i.id)):  # fmt: skip
            sub = state.subscribers.get(inst.id)
            rows.append({
                **asdict(inst), "connected": sub is not None,
                "config": sub.acked if sub else 0,
                "stale": sub is None or sub.acked < state.generation,
                "error": sub.error if sub else "",
                "identity_expires": sub.identity_expires if sub else "",
            })  # fmt: skip
        return {
            "generation": state.generation,
            "resource_version": state.resources.version,
            "instances": rows,
            "time": time.time(),  # for clock-skew checks
        }

    async def list_traces(self, request: Any, context: Any) -> dict[str, Any]:
        """Recent traces from the built-in OTLP receiver: a list, or one trace's spans
        (`trace_id`: an id or its prefix)."""
        await self._authorize(context)
        if self.traces is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this control plane receives no traces (start it with --otlp-listen)",
            )
        assert self.traces is not None
        if prefix := str(request.get("trace_id") or ""):
            found = self.traces.find(prefix)
            if found is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"no trace {prefix} (kept: the "
                                    f"{self.traces.max_traces} most recent)")  # fmt: skip
            assert found is not None
            return {"trace_id": found[0], "spans": found[1]}
        limit = int(request.get("limit") or 20)
        listed = self.traces.summaries(self.traces.max_traces, str(request.get("service") or ""))
        done = [t for t in listed if t["settled"]]
        return {"traces": done[:limit], "receiving": len(listed) - len(done)}

    async def top(self, request: Any, context: Any) -> dict[str, Any]:
        """RPS, success rate and latency by service and version over the last `window_s`,
        from the counters this replica's sidecars report (control/top.py)."""
        await self._authorize(context)
        try:
            window_s = float(request.get("window_s", top.WINDOW_S))
            if not top.STATS_S <= window_s <= top.HISTORY_S:
                raise ValueError
        except (TypeError, ValueError):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"window_s: seconds from {top.STATS_S:g} to {top.HISTORY_S:g}",
            )
        namespace = request.get("namespace") or None
        subs = [s for s in self.state.subscribers.values()
                if namespace is None or s.instance.namespace == namespace]  # fmt: skip
        instances = [(s.instance.namespace, s.instance.service, s.instance.version, s.samples)
                     for s in subs]  # fmt: skip
        now = asyncio.get_running_loop().time()
        return {"time": time.time(), "window_s": window_s,
                "services": top.rows(instances, now, window_s)}  # fmt: skip


def _who(i: Instance) -> str:
    return f"{i.namespace}/{i.service} {i.version or '-'} {i.id} ({i.address}:{i.port})"


async def _not_saved(context: Any, exc: ConsulError) -> None:
    """A write Consul did not take: its own reason, with a code saying whether Consul
    refused it (trying again changes nothing) or could not be reached."""
    if isinstance(exc, ConsulRefused):
        code = (
            grpc.StatusCode.PERMISSION_DENIED
            if exc.status == 403
            else grpc.StatusCode.FAILED_PRECONDITION
        )
    else:
        code = grpc.StatusCode.UNAVAILABLE
    await context.abort(code, f"not saved: {exc}")
