"""A tenant router: the tenant comes from the `x-tenant` header or else the first label of
the host (`acme.api.example.com`); known tenants are told to the upstream in a header of
its choosing, unknown ones are answered 403 at the gateway.

    apiVersion: weft.dev/v1alpha1
    kind: PythonFilter
    metadata: {name: tenants}
    spec:
      file: tenant_router.py
      class: TenantRouter
      config: {tenants: {acme: eu-1, globex: us-2}, header: x-tenant-region}
"""

from __future__ import annotations

from typing import Any

from sidecar.filters.python import Reply


class TenantRouter:
    config_schema = {
        "type": "object",
        "properties": {
            "tenants": {"type": "object", "additionalProperties": {"type": "string"}},
            "header": {"type": "string"},
        },
        "required": ["tenants"],
    }

    def __init__(self, config: dict[str, Any]) -> None:
        self.tenants: dict[str, str] = config["tenants"]
        self.header = config.get("header", "x-tenant-region")

    def on_request(self, request: Any) -> Reply | None:
        tenant = request.header("x-tenant") or request.host.split(".", 1)[0]
        region = self.tenants.get(tenant)
        if region is None:
            return Reply(403, f"unknown tenant {tenant!r}\n", (("content-type", "text/plain"),))
        request.set_header("x-tenant", tenant)
        request.set_header(self.header, region)
        request.set_response_header("x-served-tenant", tenant)
        return None
