"""Incremental pushes, as delta xDS does: what changed between two snapshots (pure).

A sidecar whose hello says it takes deltas (`"deltas": true`) is sent one full snapshot
when its watch opens, and from then on only what changed:

    {"delta": {"version": G, "upsert": [doc, ...], "remove": [[kind, ns, name], ...],
               "endpoints": [{"key": [kind, ns, name], "add": [ep, ...], "remove": [ep, ...]}]}}

documents new or changed, the keys of documents gone, and for a Service whose only change
is its endpoint list, the endpoints that joined and left instead of the whole document: a
traffic shift sends the one route it changed, an instance joining a 1,000-instance service
sends one endpoint. `diff` is the control plane's side, `apply` and `ordered` the sidecar's;
a test holds `ordered(apply(old, diff(old, new)))` to `new`.
"""

from __future__ import annotations

from typing import Any

Doc = dict[str, Any]
Key = tuple[str, str, str]


def key(doc: Doc) -> Key:
    md = doc.get("metadata", {})
    return (str(doc.get("kind", "")), str(md.get("namespace", "default")), str(md["name"]))


def _endpoint(ep: Doc) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(ep.items()))


def _without_endpoints(doc: Doc) -> Doc:
    return {**doc, "spec": {**doc.get("spec", {}), "endpoints": None}}


def _patch(k: Key, old: Doc, new: Doc) -> Doc | None:
    """The endpoints that joined and left; None when a patch cannot say it (repeats)."""
    before = [_endpoint(e) for e in old.get("spec", {}).get("endpoints", [])]
    after = [_endpoint(e) for e in new.get("spec", {}).get("endpoints", [])]
    had, has = set(before), set(after)
    if len(had) != len(before) or len(has) != len(after):
        return None
    added = [e for e, t in zip(new["spec"]["endpoints"], after, strict=True) if t not in had]
    gone = [e for e, t in zip(old["spec"]["endpoints"], before, strict=True) if t not in has]
    return {"key": list(k), "add": added, "remove": gone}


def diff(old: list[Doc], new: list[Doc]) -> Doc | None:
    """What turns `old` into `new` (None: nothing)."""
    before = {key(d): d for d in old}
    upsert: list[Doc] = []
    patches: list[Doc] = []
    seen = set()
    for doc in new:
        k = key(doc)
        seen.add(k)
        was = before.get(k)
        if was is doc or was == doc:
            continue
        patch = None
        if (
            was is not None
            and k[0] == "Service"
            and (_without_endpoints(was) == _without_endpoints(doc))
        ):
            patch = _patch(k, was, doc)
        if patch is not None:
            patches.append(patch)
        else:
            upsert.append(doc)
    remove = [list(k) for k in before if k not in seen]
    if not (upsert or patches or remove):
        return None
    return {"upsert": upsert, "remove": remove, "endpoints": patches}


def apply(resources: dict[Key, Doc], delta: Doc) -> None:
    """Apply `delta` to a sidecar's documents by key, in place; ValueError when it names
    a Service the sidecar does not have (its state and the control plane's differ)."""
    for k in delta.get("remove", []):
        resources.pop((str(k[0]), str(k[1]), str(k[2])), None)
    for doc in delta.get("upsert", []):
        resources[key(doc)] = doc
    for patch in delta.get("endpoints", []):
        raw = patch["key"]
        k = (str(raw[0]), str(raw[1]), str(raw[2]))
        doc = resources.get(k)
        if doc is None:
            raise ValueError(f"endpoints for {'/'.join(k)}, which this sidecar was not sent")
        gone = {_endpoint(e) for e in patch.get("remove", [])}
        spec = doc.get("spec", {})
        kept = [e for e in spec.get("endpoints", []) if _endpoint(e) not in gone]
        resources[k] = {**doc, "spec": {**spec, "endpoints": kept + list(patch.get("add", []))}}


def ordered(resources: dict[Key, Doc]) -> list[Doc]:
    """The documents in the order a full snapshot lists them (control/snapshot.py):
    Services by namespace and name, then everything else by kind, namespace and name."""
    return [resources[k] for k in sorted(resources, key=lambda k: (k[0] != "Service", k))]
