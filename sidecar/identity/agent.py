"""The identity helper: `python -m sidecar.identity.agent` trades a CSR for an SVID.

A sidecar runs it at start and at each renewal, with an `SvidRequest` as JSON on stdin; it
answers one JSON object on stdout, `{"svid": …}` or `{"error": "why"}`, and exits. grpcio,
protobuf and cryptography load here and leave with the process: together they weigh more
than the sidecar's whole data plane (~25 MB resident), for a few calls a day.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from ca.spiffe import InvalidSpiffeId, SpiffeId
from sidecar.identity.svid import IdentityError, Svid, SvidRequest, control_planes


def obtain(request: SvidRequest) -> Svid:
    """From the first control plane replica that answers (a dead one is skipped)."""
    errors = []
    for target in control_planes(request.control_plane):
        try:
            return _obtain(request, target)
        except IdentityError as exc:
            errors.append(f"{target}: {exc}")
    raise IdentityError("; ".join(errors) or "no control plane address given")


def _obtain(request: SvidRequest, target: str) -> Svid:
    from sidecar.identity import client

    trust = request.trust_pem
    if trust is None:
        if not request.ca_fingerprint:
            raise IdentityError("give --ca-file or --ca-fingerprint to trust the control plane")
        trust = client.trust_from_fingerprint(target, request.ca_fingerprint, request.timeout_s)
    try:
        identity = SpiffeId(client.trust_domain(trust), request.namespace, request.service)
    except InvalidSpiffeId as exc:
        raise IdentityError(str(exc)) from None
    return client.request_svid(
        target, identity, trust_pem=trust, token=request.token,
        current=request.current, timeout_s=request.timeout_s,
    )  # fmt: skip


def answer(raw: str) -> dict[str, Any]:
    try:
        request = SvidRequest.from_json(json.loads(raw))
    except (ValueError, KeyError, TypeError) as exc:
        return {"error": f"bad request to the identity helper: {exc!r}"}
    try:
        return {"svid": obtain(request).to_json()}
    except IdentityError as exc:
        return {"error": str(exc)}


def main() -> int:
    reply = answer(sys.stdin.read())
    sys.stdout.write(json.dumps(reply))
    return 0 if "svid" in reply else 1


if __name__ == "__main__":
    sys.exit(main())
