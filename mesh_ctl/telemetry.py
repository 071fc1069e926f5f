"""Command-line options shared by the proxies (edge, sidecar): traces and the access log.

Trace options default to OpenTelemetry's standard variables, so a deployment that already
sets OTEL_EXPORTER_OTLP_ENDPOINT (docker-compose.yml does) needs no flag.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, TextIO

from mesh_ctl.common import CliError

if TYPE_CHECKING:
    from sidecar.observe.tracing import TraceOptions

SAMPLERS = ("parentbased_traceidratio", "traceidratio")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT", ""
    )
    group = parser.add_argument_group("traces and access log")
    group.add_argument(
        "--otlp-endpoint", default=endpoint, metavar="HOST:PORT",
        help="export spans over OTLP/gRPC (Jaeger: :4317); default "
        "OTEL_EXPORTER_OTLP_ENDPOINT, else no tracing",
    )  # fmt: skip
    group.add_argument(
        "--trace-sampling", type=float, default=None, metavar="RATIO",
        help="share of new traces recorded, 0..1 (default OTEL_TRACES_SAMPLER_ARG, else 1); "
        "a sampled caller is always followed",
    )  # fmt: skip
    group.add_argument(
        "--trace-sampler", choices=SAMPLERS, default=None,
        help="parentbased_traceidratio (default, or OTEL_TRACES_SAMPLER) also follows a "
        "caller that did not sample",
    )  # fmt: skip
    group.add_argument(
        "--access-log", default="-", metavar="PATH|-|off",
        help="where JSON access log lines go (default: standard output)",
    )  # fmt: skip


# OTEL_TRACES_SAMPLER values Weft can follow: (parent-based, ratio or None for the argument).
_ENV_SAMPLERS: dict[str, tuple[bool, float | None]] = {
    "parentbased_traceidratio": (True, None), "traceidratio": (False, None),
    "parentbased_always_on": (True, 1.0), "always_on": (False, 1.0),
    "parentbased_always_off": (True, 0.0), "always_off": (False, 0.0),
}  # fmt: skip


def trace_options(args: argparse.Namespace) -> TraceOptions | None:
    """What the flags (else OpenTelemetry's variables) say about tracing (None: off);
    CliError for a ratio or a sampler Weft cannot follow."""
    if not args.otlp_endpoint:
        return None
    name = os.environ.get("OTEL_TRACES_SAMPLER", SAMPLERS[0]).strip().lower()
    if name not in _ENV_SAMPLERS:
        raise CliError(f"OTEL_TRACES_SAMPLER={name} is not one of: {', '.join(_ENV_SAMPLERS)}")
    parent_based, ratio = _ENV_SAMPLERS[name]
    if args.trace_sampler is not None:
        parent_based, ratio = args.trace_sampler == SAMPLERS[0], None
    if args.trace_sampling is not None:
        ratio = args.trace_sampling
    if ratio is None:
        text = os.environ.get("OTEL_TRACES_SAMPLER_ARG", "1")
        try:
            ratio = float(text)
        except ValueError:
            raise CliError(f"OTEL_TRACES_SAMPLER_ARG={text} is not a number") from None
    if not 0.0 <= ratio <= 1.0:
        raise CliError(f"the trace sampling ratio must be within 0..1, not {ratio}")
    from sidecar.observe.tracing import TraceOptions

    return TraceOptions(endpoint=args.otlp_endpoint, ratio=ratio, parent_based=parent_based)


def access_log_sink(value: str) -> TextIO | None:
    """The access log's destination: standard output (-), a file (appended to), or none."""
    if value == "off":
        return None
    if value == "-":
        return sys.stdout
    try:
        return open(value, "a", encoding="utf-8")
    except OSError as exc:
        raise CliError(f"--access-log: {exc}") from None
