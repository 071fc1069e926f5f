"""Coverage-guided fuzzing of the HTTP/2 request validator: any header list either is
refused (ProtocolError / StreamError) or maps to a request whose method, target, Host and
fields an HTTP/1.1 upstream would read exactly as validated (checked by serializing it
with the real head builder and parsing it back with llhttp).

    python -m fuzz.h2_request [libFuzzer flags]
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from sidecar.config.model import Limits
    from sidecar.errors import ProtocolError
    from sidecar.http.request import parse_target, upstream_request
    from sidecar.protocol.http2 import check_trailers, request_head
    from tests.support import forward_oracle as oracle

_NAMES = [
    b":method", b":path", b":authority", b":scheme", b"host", b"content-length", b"te",
    b"connection", b"cookie", b"x-forwarded-client-cert", b"x-request-id", b"x-a",
]  # fmt: skip


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    headers = []
    for _ in range(fdp.ConsumeIntInRange(0, 10)):
        name = (
            _NAMES[fdp.ConsumeIntInRange(0, len(_NAMES) - 1)]
            if fdp.ConsumeBool()
            else fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 8))
        )
        headers.append((name, fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 24))))
    with contextlib.suppress(ProtocolError):
        check_trailers(headers)
    try:
        head = request_head(headers, end_stream=fdp.ConsumeBool())
        authority, target, _, _ = parse_target(head, Limits())
    except ProtocolError:
        return
    fwd = oracle.INBOUND
    rid = head.request_id.decode("latin-1") or oracle.RID
    out = bytes(upstream_request(head, target, authority, oracle._ACTION, (),
                                 oracle._MATCH, fwd, rid))  # fmt: skip
    if head.chunked:
        out += b"0\r\n\r\n"
    (seen,) = oracle.parse_strict(out)
    assert seen.method.decode() == head.method and seen.target.decode("latin-1") == target
    assert seen.values(b"host") == [authority.encode("latin-1")]
    assert seen.values(b"x-forwarded-client-cert") == [fwd.client_cert[25:].rstrip()]


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
