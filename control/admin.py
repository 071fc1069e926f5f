"""`weft.admin.v1.Admin`: apply, get and delete resources (what `meshctl` calls).

Every call needs the admin token. A change is validated whole (control/store.py), saved to
disk, and only then put in force, so a restart never serves less than was acknowledged.
"""

from __future__ import annotations

import hmac
from typing import Any

import grpc

from control import api
from control.state import ControlState
from sidecar.config.parse import Document
from sidecar.errors import ConfigError


class AdminService:
    def __init__(self, state: ControlState, token: str) -> None:
        self.state = state
        self.token = token

    def handler(self) -> grpc.GenericRpcHandler:
        methods = {"Apply": self.apply, "Get": self.get, "Delete": self.delete}
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
            version, outcome = self.state.apply(docs)
        except ConfigError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
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
            version = self.state.delete(
                request["kind"], request.get("namespace") or "default", request["name"]
            )
        except KeyError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc.args[0]))
        return {"version": version}
