"""Templates over a request (JWT claims included) and JSON path edits."""

from __future__ import annotations

import json

import pytest

from sidecar.filters.chain import Exchange
from sidecar.filters.transform import JsonEdits, Template, TemplateError, parse_json_path


def _x() -> Exchange:
    x = Exchange("GET", "shop.example", "/a", "q=1", [(b"X-Tenant", b"acme")], "10.0.0.9")
    x.jwt = ("idp", {"sub": "ada", "admin": True, "groups": ["a", "b"], "evil": "a\r\nb: c"})
    return x


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("${jwt.sub}@${header.x-tenant}", "ada@acme"),
        ("${jwt.admin}", "true"),
        ("${jwt.groups}", '["a","b"]'),
        ("${jwt.missing}", None),  # not set at all
        ("${jwt.evil}", None),  # a control character is never written
        ("${method} ${host}${path} from ${client}", "GET shop.example/a from 10.0.0.9"),
        ("plain", "plain"),
    ],
)
def test_templates(text: str, want: str | None) -> None:
    assert Template.parse(text).render(_x(), {}, {"q": "1"}) == want


@pytest.mark.parametrize("text", ["${nope}", "${query}", "${method.x}", "${path.id}", "a${b"])
def test_bad_templates(text: str) -> None:
    with pytest.raises(TemplateError):
        Template.parse(text)


def test_json_paths_and_edits() -> None:
    assert parse_json_path("$.a.b[2].c") == ("a", "b", 2, "c")
    assert parse_json_path("a") == ("a",)
    for bad in ("$", "$..a", "$.a[x]", "$a", ""):
        with pytest.raises(ValueError):
            parse_json_path(bad)
    edits = JsonEdits(
        set=((parse_json_path("$.new.deep"), "1"), (parse_json_path("$.list[5]"), "0")),
        remove=(parse_json_path("$.gone"), parse_json_path("$.list[0]")),
        rename=((parse_json_path("$.old"), parse_json_path("$.renamed.here")),),
    )
    out = edits.apply(b'{"old": 1, "gone": 2, "list": [1, 2]}')
    assert out is not None
    assert json.loads(out) == {"renamed": {"here": 1}, "list": [2], "new": {"deep": 1}}
    assert edits.apply(b"[1, 2]") is not None  # edits that do not fit are skipped
    assert edits.apply(b"{not json") is None
    assert edits.apply(b"[" * 100_000) is None  # too deep: refused, never a crash


@pytest.mark.parametrize(
    ("template", "path", "groups"),
    [
        ("/v1/items/{sku}", "/v1/items/mug", {"v0": "mug"}),
        ("/v1/items/{sku}", "/v1/items/a/b", None),
        ("/v1/{name=shelves/*}", "/v1/shelves/7", {"v0": "shelves/7"}),
        ("/v1/{name=shelves/*/books/*}", "/v1/shelves/7/books/9", {"v0": "shelves/7/books/9"}),
        ("/v1/{path=**}", "/v1/a/b/c", {"v0": "a/b/c"}),
        ("/v1/items/{sku}:rate", "/v1/items/tea:rate", {"v0": "tea"}),
        ("/v1/items:watch", "/v1/items:watch", {}),
        ("/v1/items:watch", "/v1/items", None),
        ("/v1/*/x", "/v1/anything/x", {}),
    ],
)
def test_http_rule_templates(template: str, path: str, groups: dict[str, str] | None) -> None:
    from sidecar.filters.grpc_json import compile_template

    pattern, _ = compile_template(template)
    m = pattern.match(path)
    assert (m.groupdict() if m else None) == groups


def test_grpc_status_maps_to_http() -> None:
    from sidecar.filters.grpc_json import HTTP_STATUS, _grpc_status

    assert [HTTP_STATUS[c] for c in (0, 3, 5, 7, 8, 12, 14, 16)] == [
        200, 400, 404, 403, 429, 501, 503, 401]  # fmt: skip
    assert _grpc_status([(b"grpc-status", b"5"), (b"grpc-message", b"no%20item")], 200) == (
        5, "no item")  # fmt: skip
    assert _grpc_status([], 503) == (14, "the upstream answered HTTP 503")


@pytest.mark.parametrize(
    "template",
    ["/a/**/b", "/a***", "/a/*x", "/v1/{name=a**}", "/{sku", "/a:", "/a/{x}/{y=**}/c",
     "/" + "*" * 60 + "H" + ";" * 10],
)  # fmt: skip
def test_http_rule_templates_that_are_not_the_grammar_are_refused(template: str) -> None:
    """Only whole segments: a run of stars inside a segment would be a pattern that
    backtracks for minutes (the gateway fuzzer found one)."""
    from sidecar.filters.grpc_json import TranscodeError, compile_template

    with pytest.raises(TranscodeError):
        compile_template(template)
