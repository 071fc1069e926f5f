"""Several processes' Prometheus text expositions as one (an edge's workers, pure).

A sample present in several inputs (same name and labels) is summed: counters, histogram
buckets, sums and counts add up across processes, and so do gauges of what each process
holds (connections). Gauges every process reports for the same thing take the largest
value instead (`MAX`). Families keep the order they first appear in; a family's HELP and
TYPE lines appear once.
"""

from __future__ import annotations

from collections.abc import Iterable

from sidecar.observe.metrics import number_text

# Gauges that describe one shared thing rather than add up across workers.
MAX = frozenset(("weft_config_version", "weft_circuit_open", "weft_cert_expiry_seconds"))


def merge_metrics(texts: Iterable[str]) -> str:
    comments: dict[str, list[str]] = {}  # family -> its HELP/TYPE lines
    samples: dict[str, dict[str, float]] = {}  # family -> sample key -> value
    family = ""
    for text in texts:
        for line in text.splitlines():
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    seen = comments.setdefault(family, [])
                    if line not in seen:
                        seen.append(line)
                    samples.setdefault(family, {})
                continue
            key, _, value = line.rpartition(" ")
            if not key:
                continue
            name = key.partition("{")[0]
            if not _belongs(name, family):
                family = name
                comments.setdefault(family, [])
            into = samples.setdefault(family, {})
            v = float(value)
            if key in into:
                v = max(into[key], v) if family in MAX else into[key] + v
            into[key] = v
    out: list[str] = []
    for fam, lines in comments.items():
        out += lines
        out += [f"{key} {number_text(v)}" for key, v in samples.get(fam, {}).items()]
    return "\n".join(out) + "\n"


def _belongs(name: str, family: str) -> bool:
    return name == family or (
        name.startswith(family) and name[len(family) :] in ("_bucket", "_sum", "_count")
    )
