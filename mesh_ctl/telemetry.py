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
    sampler = env.get("OTEL_TRACES_SAMPLER", SAMPLERS[0])
    group = parser.add_argument_group("traces and access log")
    group.add_argument(
        "--otlp-endpoint", default=endpoint, metavar="HOST:PORT",
        help="export spans over OTLP/gRPC (Jaeger: :4317); default "
        "OTEL_EXPORTER_OTLP_ENDPOINT, else no tracing",
    )  # fmt: skip
    group.add_argument(
        "--trace-sampling", type=float, default=_ratio(env.get("OTEL_TRACES_SAMPLER_ARG")),
        metavar="RATIO", help="share of new traces recorded, 0..1 (default 1); a sampled "
        "caller is always followed",
    )  # fmt: skip
    group.add_argument(
        "--trace-sampler", choices=SAMPLERS,
        default=sampler if sampler in SAMPLERS else SAMPLERS[0],
        help="parentbased_traceidratio (default) also follows a caller that did not sample",
    )  # fmt: skip
    group.add_argument(
        "--access-log", default="-", metavar="PATH|-|off",
        help="where JSON access log lines go (default: standard output)",
    )  # fmt: skip


def _ratio(text: str | None) -> float:
    try:
        return float(text) if text else 1.0
    except ValueError:
        return 1.0


def trace_options(args: argparse.Namespace) -> TraceOptions | None:
    """What the flags say about tracing (None: off); CliError for a bad ratio."""
    if not args.otlp_endpoint:
        return None
    if not 0.0 <= args.trace_sampling <= 1.0:
        raise CliError(f"--trace-sampling must be within 0..1, not {args.trace_sampling}")
    from sidecar.observe.tracing import TraceOptions

    return TraceOptions(
        endpoint=args.otlp_endpoint,
        ratio=args.trace_sampling,
        parent_based=args.trace_sampler == SAMPLERS[0],
    )


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
