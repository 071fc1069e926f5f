"""Pure cores of the abuse limits: the reset budget, the body pace, path normalization,
and the HTTP/2 request validator's fuzz findings."""

from __future__ import annotations

import pytest

from sidecar.config.model import Limits
from sidecar.errors import ProtocolError, StreamError
from sidecar.http.pace import BodyPace
from sidecar.http.paths import normalize_path
from sidecar.protocol.http2 import request_head
from sidecar.protocol.resets import ResetBudget


def test_reset_budget_allows_a_burst_then_the_rate() -> None:
    budget = ResetBudget(0.0, burst=10, rate_per_s=2.0)
    assert all(budget.spend(0.0) for _ in range(10))
    assert not budget.spend(0.0)
    assert budget.spend(0.5)  # one token back after half a second at 2/s
    assert not budget.spend(0.5)
    assert all(budget.spend(100.0) for _ in range(10))  # refilled, never past the burst
    assert not budget.spend(100.0)


def test_body_pace_grows_with_the_bytes_received() -> None:
    pace = BodyPace(10.0, Limits(body_timeout_s=5.0, min_body_rate=100))
    assert pace.deadline == 15.0
    pace.took(250)
    assert pace.deadline == 17.5
    flat = BodyPace(0.0, Limits(body_timeout_s=5.0, min_body_rate=0))
    flat.took(10**6)
    assert flat.deadline == 5.0


@pytest.mark.parametrize(
    ("path", "merge", "want"),
    [
        ("/a/b", True, "/a/b"),
        ("/a//b/", True, "/a/b/"),
        ("/a//b/", False, "/a//b/"),
        ("/a/%2e%2E/b", True, "/b"),
        ("/a/%7e%5F%2d", True, "/a/~_-"),
        ("/a/%c3%a9", True, "/a/%C3%A9"),
        ("/a\\..\\b", True, "/b"),
        ("/..", True, "/"),
        ("/a/b/.", False, "/a/b/"),
    ],
)
def test_normalize_path(path: str, merge: bool, want: str) -> None:
    assert normalize_path(path, merge_slashes=merge) == want


@pytest.mark.parametrize(
    ("path", "action", "want"),
    [
        ("/a%2Fb", "keep", "/a%2Fb"),
        ("/a%2fb", "keep", "/a%2Fb"),
        ("/a%2F..%2Fb", "decode", "/b"),
        ("/a%5cb", "decode", "/a/b"),
    ],
)
def test_escaped_slashes_by_policy(path: str, action: str, want: str) -> None:
    assert normalize_path(path, escaped_slashes=action) == want
    with pytest.raises(ProtocolError):
        normalize_path(path, escaped_slashes="reject")


@pytest.mark.parametrize("path", ["/a%", "/a%4", "/a%g1", "/%%41"])
def test_bad_escapes_are_refused(path: str) -> None:
    with pytest.raises(ProtocolError):
        normalize_path(path)


def _h2(*extra: tuple[bytes, bytes], method: bytes = b"GET") -> list[tuple[bytes, bytes]]:
    return [(b":method", method), (b":scheme", b"http"), (b":authority", b"h"),
            (b":path", b"/"), *extra]  # fmt: skip


def test_h2_fuzz_findings() -> None:
    """What the HTTP/2 fuzzer found: a content-length that is not digits reached int(),
    and a method HTTP/1 parsers do not know was forwarded to HTTP/1.1 upstreams."""
    with pytest.raises(StreamError):
        request_head(_h2((b"content-length", b"")), end_stream=False)
    with pytest.raises(StreamError):
        request_head(_h2((b"content-length", b"\xb2")), end_stream=False)
    with pytest.raises(ProtocolError) as err:
        request_head(_h2(method=b"A"), end_stream=True)
    assert err.value.status == 501
    assert request_head(_h2(method=b"PROPFIND"), end_stream=True).method == "PROPFIND"
