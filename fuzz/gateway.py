"""Coverage-guided fuzzing of the gateway's pure cores, each with an oracle:

- Accept-Encoding negotiation picks an offered coding the client did not refuse, or none;
- Cache-Control and RFC 9111 entries: no exception, lifetimes and ages never negative;
- request decompression never returns more than its limit (a zip bomb stays bounded);
- JSON edits give JSON or refuse; path templates compile or are refused with the
  transcoder's own error.

    python -m fuzz.gateway [libFuzzer flags]
"""

from __future__ import annotations

import json
import sys

import atheris

with atheris.instrument_imports():
    from sidecar.filters.cache_rules import directives, make_entry, refusal
    from sidecar.filters.chain import LocalReply
    from sidecar.filters.compress import negotiate
    from sidecar.filters.decompress import inflate
    from sidecar.filters.grpc_json import TranscodeError, compile_template
    from sidecar.filters.transform import JsonEdits, parse_json_path

OFFERED = ("gzip", "br", "zstd")
NOW = 1_800_000_000.0


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    which = fdp.ConsumeIntInRange(0, 4)
    text = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 512))
    if which == 0:
        chosen = negotiate(text, OFFERED)
        assert chosen is None or chosen in OFFERED
        if chosen is not None:  # the client named it, or accepted anything with *
            lowered = text.lower()
            assert chosen.encode() in lowered or b"*" in lowered or (
                chosen == "gzip" and b"x-gzip" in lowered)  # fmt: skip
    elif which == 1:
        headers = []
        for line in text.split(b"\n")[:16]:
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower() or b"x", value.strip()))
        cc = directives(b", ".join(v for n, v in headers if n == b"cache-control"))
        assert all(k == k.lower() for k in cc)
        refusal("GET", fdp.ConsumeIntInRange(100, 599), {}, cc, headers, fdp.ConsumeBool())
        entry = make_entry(200, headers, b"body", headers, NOW - 1, NOW)
        if entry is not None:
            assert entry.lifetime >= 0 and entry.age(NOW) >= 0
    elif which == 2:
        limit = fdp.ConsumeIntInRange(1, 1 << 16)
        coding = ("gzip", "br", "zstd")[fdp.ConsumeIntInRange(0, 2)]
        out = inflate(coding, text + fdp.ConsumeBytes(4096), limit)
        assert isinstance(out, LocalReply) or len(out) <= limit
    elif which == 3:
        try:
            path = parse_json_path(text.decode("latin-1"))
        except ValueError:
            return
        edits = JsonEdits(set=((path, '"v"'),), remove=(path,), rename=((path, path),))
        out = edits.apply(fdp.ConsumeBytes(1024))
        if out is not None:
            json.loads(out)
    else:
        try:
            pattern, variables = compile_template(text.decode("latin-1"))
        except TranscodeError:
            return
        assert len(set(g for g, _ in variables)) == len(variables)
        pattern.match("/" + fdp.ConsumeUnicodeNoSurrogates(64))


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
