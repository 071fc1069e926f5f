"""Workers' /metrics summed into one exposition (sidecar/observe/merge.py)."""

from __future__ import annotations

from sidecar.observe.merge import merge_metrics
from sidecar.observe.metrics import Metrics


def _worker(requests: int, version: int, ejected: int) -> str:
    m = Metrics()
    for _ in range(requests):
        m.request(("edge", "edge", "default/api:80", "default/r"), 200, 0.003)
    m.request(("edge", "edge", "default/api:80", "default/r"), 503, 0.2)
    m.inc("weft_retries_total", (("cluster", "api"),), 2)
    m.gauges["weft_config_version"] = version
    m.collectors.append(lambda: [("weft_circuit_open", (("cluster", "api"),), ejected)])
    return m.render()


def test_counters_and_histograms_add_up_and_shared_gauges_take_the_largest() -> None:
    merged = merge_metrics([_worker(3, 2, 1), _worker(5, 3, 0)])
    lines = merged.splitlines()
    ok = ('weft_requests_total{direction="edge",service="edge",peer="default/api:80",'
          'route="default/r",code_class="2xx",code="200"} 8')  # fmt: skip
    assert ok in lines
    assert any(line.endswith('code="503"} 2') for line in lines)
    base = 'direction="edge",service="edge",peer="default/api:80",route="default/r"'
    assert f'weft_request_duration_seconds_bucket{{{base},le="0.005"}} 8' in lines
    assert f'weft_request_duration_seconds_bucket{{{base},le="+Inf"}} 10' in lines
    assert f"weft_request_duration_seconds_count{{{base}}} 10" in lines
    assert f"weft_request_duration_seconds_sum{{{base}}} 0.424" in lines
    assert 'weft_retries_total{cluster="api"} 4' in lines
    assert "weft_config_version 3" in lines and 'weft_circuit_open{cluster="api"} 1' in lines
    # each family's HELP and TYPE once, before its samples
    assert lines.count("# TYPE weft_requests_total counter") == 1
    assert lines.index("# TYPE weft_retries_total counter") < lines.index(
        'weft_retries_total{cluster="api"} 4'
    )


def test_one_input_comes_back_with_the_same_lines_and_values() -> None:
    def parsed(text: str) -> list[tuple[str, float | str]]:
        return [
            (line, "") if line.startswith("#") else (line.rsplit(" ", 1)[0], float(line.rsplit(" ", 1)[1]))
            for line in text.splitlines()
        ]  # fmt: skip

    text = _worker(2, 1, 0)
    assert parsed(merge_metrics([text])) == parsed(text)
