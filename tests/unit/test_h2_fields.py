"""HTTP/2 field validation (protocol/http2.py) against the RFC 9113 §8.2 rules written as
regular expressions: a name is lower-case token characters, a value has no control bytes
(HTAB aside) and no whitespace at either end; checked ones are remembered, so each verdict
is asked twice."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.protocol.http2 import _field_error

NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]|^[ \t]|[ \t]$")
CONNECTION = {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}

octets = st.one_of(
    st.binary(max_size=12),
    st.sampled_from([b"x-a", b"te", b"a b", b" v", b"v\t", b"\x7f", b"\x80\xff", b"trailers"]),
)


@settings(max_examples=2000, deadline=None)
@given(octets, octets)
def test_field_checks_follow_the_rfc(name: bytes, value: bytes) -> None:
    good = (bool(NAME.fullmatch(name)) and not BAD_VALUE.search(value)
            and name not in CONNECTION and not (name == b"te" and value != b"trailers"))  # fmt: skip
    assert (_field_error(name, value) is None) == good
    assert (_field_error(name, value) is None) == good  # the remembered verdict
