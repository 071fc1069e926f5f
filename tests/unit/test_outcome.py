"""http/outcome.py: one request's record and its transitions."""

from __future__ import annotations

import pytest

from sidecar.http.outcome import Head, Outcome, RetryableStatus
from sidecar.upstream.h2client import Response
from sidecar.upstream.retry import Failure


def test_a_streamed_request_is_copied_for_a_retry_only_within_its_buffer() -> None:
    o = Outcome()
    o.keep_copy(b"HEAD", 10)
    o.sent(b"12345", b"5\r\n12345\r\n")  # 10 bytes on the wire: exactly the room
    assert o.replay == b"HEAD5\r\n12345\r\n" and o.bytes_in == 5
    o.sent(b"6", b"1\r\n6\r\n")
    assert o.replay is None and o.bytes_in == 6  # past the buffer: never replayed
    o.sent(b"7", b"7")
    assert o.replay is None


def test_the_gate_takes_a_response_head_before_it_counts_as_started() -> None:
    seen: list[int] = []

    def gate(status: int, head: Head) -> Failure | None:
        seen.append(status)
        return Failure.STATUS if status == 503 else None

    o = Outcome()
    o.begin_try("10.0.0.1:80", gate)
    with pytest.raises(RetryableStatus) as taken:
        o.response(503, Response(503, [(b"X-Weft-Error", b"connect_failure")]))
    assert taken.value.failure is Failure.STATUS
    assert o.proxy_error and not o.response_started and o.status == 0
    o.retry()
    assert not o.proxy_error
    o.begin_try("10.0.0.2:80", None)  # the last try: forwarded whatever it is
    o.response(502, Response(502, []))
    assert (o.status, o.response_started, o.proxy_error, o.upstream) == (
        502, True, False, "10.0.0.2:80",
    )  # fmt: skip
    assert seen == [503]


def test_a_grpc_status_is_read_from_the_trailers() -> None:
    o = Outcome()
    o.ended(None)
    assert o.grpc_status == -1
    o.ended([(b"grpc-status", b"14"), (b"grpc-message", b"unavailable")])
    assert o.grpc_status == 14
    o.ended([(b"grpc-status", b"x")])
    assert o.grpc_status == -1
