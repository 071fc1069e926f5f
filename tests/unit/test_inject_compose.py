"""`meshctl inject compose` and `uninject compose` on compose files of real-world shapes:
the output is what the golden files hold (reviewed by hand), a valid compose file by the
Compose specification's own parser, wired as the mesh needs it, unchanged by a second
injection, and taken back out by `uninject`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from compose_spec import PyCompose
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.cli import meshctl as _meshctl

GOLDEN = Path(__file__).parents[1] / "golden" / "inject"
CASES = {  # input -> (golden output, extra arguments)
    "shop": ("shop.compose.yaml", "shop.injected.yaml", []),
    "api": ("api.compose.yaml", "api.injected.yaml",
            ["--app-port", "worker=9000", "--image", "registry.example/weft:0.1"]),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_injection_matches_the_golden_file_and_the_compose_spec(
    case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source, golden, extra = CASES[case]
    code, out, err = _meshctl(capsys, "inject", "compose", str(GOLDEN / source), *extra)
    assert code == 0, err
    assert out == (GOLDEN / golden).read_text()
    PyCompose.from_yaml((GOLDEN / source).read_text())  # the input is valid compose…
    PyCompose.from_yaml(out)  # …and so is what inject wrote (raises ValueError otherwise)
    # a second injection changes nothing
    code, again, _ = _meshctl(capsys, "inject", "compose", "-", *extra, stdin=out)
    assert code == 0 and again == out
    # uninject gives back the services as they were (keys may come back in another order)
    code, back, err = _meshctl(capsys, "uninject", "compose", "-", stdin=out)
    assert code == 0, err
    assert yaml.safe_load(back) == yaml.safe_load((GOLDEN / source).read_text())


def test_the_shop_is_wired_as_the_mesh_needs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _meshctl(capsys, "inject", "compose", str(GOLDEN / "shop.compose.yaml"))
    assert code == 0
    assert "not injected: db: 'log-shipper' shares its network namespace" in err
    assert "injected: web, api" in err
    services: dict[str, Any] = yaml.safe_load(out)["services"]
    for name, port in (("web", 80), ("api", 3000)):
        app, proxy, init = (services[name], services[f"{name}-weft-proxy"],
                            services[f"{name}-weft-init"])  # fmt: skip
        # the app joins the proxy's namespace and waits for the rules and for /ready
        assert app["network_mode"] == f"service:{name}-weft-proxy"
        assert app["depends_on"][f"{name}-weft-init"] == {
            "condition": "service_completed_successfully"
        }
        assert app["depends_on"][f"{name}-weft-proxy"] == {"condition": "service_healthy"}
        assert not {"ports", "networks", "expose"} & set(app)  # moved to the namespace owner
        assert "/ready" in " ".join(proxy["healthcheck"]["test"])
        cmd = proxy["command"]
        assert cmd[cmd.index("--app-port") + 1] == str(port) and "--intercept" in cmd
        assert all(name in conf["aliases"] for conf in proxy["networks"].values())
        assert init["network_mode"] == f"service:{name}-weft-proxy"
        assert init["cap_add"] == ["NET_ADMIN"] and init["user"] == "root"
        assert init["command"][:3] == ["init", "--proxy-uid", "10001"]
    # api keeps its own dependency; web's published port stays reachable from outside
    assert services["api"]["depends_on"]["db"] == {"condition": "service_healthy"}
    assert services["web-weft-proxy"]["ports"] == ["8080:80"]
    assert services["web-weft-init"]["command"][-1] == "15000,22,80"
    assert services["api-weft-proxy"]["networks"]["back"]["aliases"] == ["backend", "api"]
    # the control plane the file lacked, on every network a sidecar is on
    assert "web api" in services["weft-setup"]["command"][0]
    assert set(services["weft-control-plane"]["networks"]) == {"front", "back"}
    assert "db" not in [s.removesuffix("-weft-proxy") for s in services if s.endswith("-proxy")]


def test_an_existing_control_plane_adds_none(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _meshctl(capsys, "inject", "compose", str(GOLDEN / "shop.compose.yaml"),
                            "--service", "api", "--control-plane", "mesh.internal:15010")  # fmt: skip
    assert code == 0
    doc = yaml.safe_load(out)
    assert "weft-control-plane" not in doc["services"] and "weft-setup" not in doc["services"]
    assert "mesh.internal:15010" in doc["services"]["api-weft-proxy"]["command"]
    assert "web-weft-proxy" not in doc["services"]  # only what was asked
    assert doc["volumes"] == {"weft": {}}  # the tokens' volume is declared
    PyCompose.from_yaml(out)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--service", "db"], "cannot inject 'db': 'log-shipper' shares its network namespace"),
        (["--service", "log-shipper"], "cannot inject 'log-shipper': it has network_mode"),
        (["--service", "nope"], "no service 'nope' in the file"),
    ],
)
def test_what_cannot_be_injected_says_why(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _meshctl(capsys, "inject", "compose", str(GOLDEN / "shop.compose.yaml"), *argv)
    assert code == 1 and out == ""
    assert message in err


def test_a_service_without_a_known_port_is_refused_with_the_remedy(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = _meshctl(capsys, "inject", "compose", str(GOLDEN / "api.compose.yaml"))
    assert code == 1
    assert "cannot tell the port of 'worker'" in err and "--app-port worker=8080" in err


def test_replicas_and_bad_labels_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "compose.yaml"
    path.write_text("services:\n  a: {image: x, expose: ['80'], deploy: {replicas: 3}}\n"
                    "  b: {image: y, expose: ['80'], labels: {dev.weft.protocol: SMTP}}\n")  # fmt: skip
    code, _, err = _meshctl(capsys, "inject", "compose", str(path), "--service", "a")
    assert code == 1 and "it runs 3 replicas" in err
    code, _, err = _meshctl(capsys, "inject", "compose", str(path), "--service", "b")
    assert code == 1 and "dev.weft.protocol must be one of HTTP, HTTP2, GRPC, TCP" in err
    code, _, err = _meshctl(capsys, "uninject", "compose", str(path), "--service", "b")
    assert code == 1 and "service 'b' is not injected" in err


def test_in_place_keeps_comments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "compose.yaml"
    path.write_text((GOLDEN / "shop.compose.yaml").read_text())
    code, out, _ = _meshctl(capsys, "inject", "compose", "-i", str(path))
    assert code == 0 and out == ""
    text = path.read_text()
    assert "# the only published port" in text and "# shares db's namespace" in text
    assert "web-weft-proxy:" in text


KEYS = st.sampled_from(["services", "image", "ports", "expose", "networks", "network_mode",
                        "depends_on", "labels", "environment", "deploy", "replicas", "scale",
                        "profiles", "aliases", "a", "web", "dev.weft.app-port", "PORT"])  # fmt: skip
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.text(max_size=8))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(KEYS, VALUES, max_size=4), st.lists(st.sampled_from(["web", "a"]), max_size=2)
)
def test_any_document_is_injected_or_refused_with_a_reason(
    doc: dict[str, Any], chosen: list[str]
) -> None:
    """Whatever a file holds, inject either succeeds (and then uninject takes it back out)
    or refuses with InjectError; nothing else escapes."""
    from mesh_ctl.inject import compose

    try:
        names, _ = compose.inject(doc, chosen, compose.Options())
    except compose.InjectError:
        return
    assert set(chosen) <= set(names)
    compose.uninject(doc, [])
    assert not any(str(k).endswith("-weft-proxy") for k in doc["services"])
