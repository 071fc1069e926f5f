"""Coverage-guided fuzzing of the HTTP/1 parser and head builder with the differential
oracle (tests/support/forward_oracle.py, `check_input`): whatever the bytes, whole or split
into reads, at the edge or inbound, an accepted request must reach a backend as exactly the
validated request. Inputs are raw client bytes: a finding goes into tests/fuzz/http1/ as is.

    python -m fuzz.http1_forward [libFuzzer flags, e.g. -max_total_time=60 CORPUS_DIR]
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from tests.support import forward_oracle


if __name__ == "__main__":
    atheris.Setup(sys.argv, forward_oracle.check_input)
    atheris.Fuzz()
