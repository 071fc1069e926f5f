"""The sidecar's side of the identity helper: run it, hand it the request, read the SVID."""

from __future__ import annotations

import json
import sys

import trio

from sidecar.identity.svid import IdentityError, Svid, SvidRequest

HELPER = (sys.executable, "-m", "sidecar.identity.agent")
STARTUP_S = 20.0  # the helper's own start (interpreter, grpcio, cryptography) on a busy host


async def fetch_svid(request: SvidRequest) -> Svid:
    """An SVID from the control plane, via a helper process; IdentityError says why not."""
    with trio.move_on_after(request.timeout_s + STARTUP_S) as scope:
        proc = await trio.run_process(
            HELPER, stdin=json.dumps(request.to_json()).encode(),
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    if scope.cancelled_caught:
        raise IdentityError("the identity helper did not answer in time")
    try:
        reply = json.loads(proc.stdout)
    except ValueError:
        last = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise IdentityError(f"the identity helper failed: {last[0]}") from None
    if "error" in reply:
        raise IdentityError(reply["error"])
    svid = Svid.from_json(reply["svid"])
    if (svid.identity.namespace, svid.identity.service) != (request.namespace, request.service):
        raise IdentityError(f"the identity helper returned {svid.identity}")
    return svid
