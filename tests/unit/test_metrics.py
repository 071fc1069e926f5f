"""The data plane's /metrics text is what Prometheus' own parser reads, with the values put in;
`summary` (what `meshctl top` is fed) adds up the served requests only."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from sidecar.observe.metrics import BUCKETS_S, Metrics, code_class


def _filled() -> Metrics:
    m = Metrics()
    inbound = ("inbound", "orders", "", "default/orders")
    outbound = ("outbound", "orders", "default/stock:80", "default/stock")
    for code, seconds in ((200, 0.0004), (200, 0.003), (503, 0.2), (404, 0.001), (0, 7.0)):
        m.request(inbound, code, seconds)
    m.request(outbound, 500, 0.01)  # what orders called: not what it served
    base = (("direction", "inbound"), ("service", "orders"), ("peer", ""), ("route", ""))
    m.inc("weft_tcp_connections_total", (*base, ("result", "closed")), 3)
    m.inc("weft_tcp_connections_total", (*base, ("result", "connect_failed")), 1)
    m.inc("weft_tcp_bytes_total", (*base, ("flow", "upstream")), 1_500_000)
    m.observe("weft_tcp_connection_duration_seconds", base, 0.02)
    m.gauges["weft_config_version"] = 7
    m.collectors.append(lambda: [("weft_circuit_open", (("cluster", 'a"b\\c'),), 1.0)])
    return m


def test_the_text_is_what_prometheus_parses() -> None:
    families = {f.name: f for f in text_string_to_metric_families(_filled().render())}
    requests = families["weft_requests"]
    assert requests.type == "counter"
    by_code = {
        (s.labels["direction"], s.labels["code"]): (s.labels["code_class"], s.value)
        for s in requests.samples
    }
    assert by_code[("inbound", "200")] == ("2xx", 2)
    assert by_code[("inbound", "503")] == ("5xx", 1)
    assert by_code[("inbound", "404")] == ("4xx", 1)
    assert by_code[("inbound", "0")] == ("none", 1)
    assert by_code[("outbound", "500")] == ("5xx", 1)
    durations = families["weft_request_duration_seconds"]
    assert durations.type == "histogram"
    inbound = {
        s.labels.get("le"): s.value
        for s in durations.samples
        if s.labels["direction"] == "inbound" and s.name.endswith("_bucket")
    }
    assert inbound["0.0005"] == 1 and inbound["0.005"] == 3 and inbound["+Inf"] == 5
    assert families["weft_tcp_bytes"].samples[0].value == 1_500_000
    assert families["weft_config_version"].samples[0].value == 7
    circuit = families["weft_circuit_open"].samples[0]
    assert circuit.labels["cluster"] == 'a"b\\c' and circuit.value == 1


def test_summary_counts_what_was_served() -> None:
    summary = _filled().summary(("inbound", "edge"))
    assert summary["requests"] == 5
    assert summary["failures"] == 2  # the 503 and the request that got no response
    buckets = summary["buckets"]
    assert isinstance(buckets, list) and len(buckets) == len(BUCKETS_S) + 1
    assert sum(buckets) == 5 and buckets[0] == 1 and buckets[-2] == 1  # 7 s: the 10 s bucket
    assert summary["connections"] == 4 and summary["connection_failures"] == 1
    assert Metrics().summary(("inbound",)) == {
        "requests": 0, "failures": 0, "buckets": [0] * (len(BUCKETS_S) + 1), "connections": 0,
        "connection_failures": 0,
    }  # fmt: skip


def test_code_classes() -> None:
    assert [code_class(c) for c in (101, 204, 302, 429, 599, 0, 600)] == [
        "1xx", "2xx", "3xx", "4xx", "5xx", "none", "none",
    ]  # fmt: skip
