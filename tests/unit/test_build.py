"""The compiled build (setup.py, sidecar/build.py): what runs, when it is stale, and the
mypyc traps kept out of the compiled modules."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import setup
import sidecar
from sidecar import build
from sidecar.http import forward

ROOT = Path(setup.__file__).parent


def test_the_suite_runs_the_build_make_asked_for() -> None:
    """`make test` runs the suite on the compiled build, and a part of it on the sources."""
    expected = os.environ.get("WEFT_EXPECT_BUILD")
    if expected is None:
        pytest.skip("run outside make: no build expected")
    assert sidecar.BUILD.split()[0] == expected
    suffix = Path(forward.__file__ or "").suffix
    assert suffix == (".so" if expected == "compiled" else ".py")


def _run(code: str, **env: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env},
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return proc.stdout + proc.stderr


@pytest.mark.skipif(not build.MANIFEST.exists(), reason="no compiled build here")
def test_weft_pure_runs_the_sources_of_a_compiled_build() -> None:
    code = "import sidecar, sidecar.http.forward as f; print(sidecar.BUILD, f.__file__)"
    out = _run(code, WEFT_PURE="1")
    assert "pure (WEFT_PURE=1)" in out and "forward.py" in out
    assert "forward.cpython" in _run(code, WEFT_PURE="0")


@pytest.mark.skipif(not build.MANIFEST.exists(), reason="no compiled build here")
def test_a_source_edited_after_the_build_is_run_instead_with_a_warning(
    tmp_path: Path,
) -> None:
    """A copy of the package whose manifest no longer matches one source: every module
    comes from source (never a mix), and the warning names the module."""
    package = tmp_path / "sidecar"
    subprocess.run(["cp", "-a", str(ROOT / "sidecar"), str(package)], check=True)
    manifest = json.loads((package / "compiled.json").read_text())
    manifest["sidecar/http/router.py"] = "0" * 64
    (package / "compiled.json").write_text(json.dumps(manifest))
    proc = subprocess.run(
        [sys.executable, "-c", "import sidecar, sidecar.http.forward as f, "
         "sidecar.http.router as r; print(sidecar.BUILD, f.__file__, r.__file__)"],
        cwd=tmp_path, env={**os.environ, "WEFT_PURE": "0"}, capture_output=True, text=True,
        check=True, timeout=60,
    )  # fmt: skip
    assert proc.stdout.split()[:3] == ["pure", "(compiled", "modules"]
    assert proc.stdout.rstrip().endswith("forward.py " + str(package / "http/router.py"))
    assert "sidecar/http/router.py" in proc.stderr and "RuntimeWarning" in proc.stderr


def test_build_requirements_cover_every_runtime_dependency() -> None:
    """mypyc type-checks the compiled modules against the libraries they call, so an
    isolated `pip install .` needs them in its build environment."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    name = re.compile(r"[A-Za-z0-9_.-]+")

    def names(reqs: list[str]) -> set[str]:
        return {m.group(0).lower() for r in reqs if (m := name.match(r))}

    runtime = names(project["project"]["dependencies"])
    assert runtime <= names(project["build-system"]["requires"])
    imported = set()
    for path in setup.compiled_sources():
        for node in ast.walk(ast.parse((ROOT / path).read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
    dists = importlib.metadata.packages_distributions()
    third_party = imported - set(sys.stdlib_module_names) - {"sidecar", "ca", "__future__"}
    for module in third_party:
        assert {d.lower() for d in dists[module]} & runtime, module


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


@pytest.mark.parametrize("path", setup.compiled_sources())
def test_compiled_modules_avoid_mypyc_traps(path: str) -> None:
    """What compiles but fails at run time: one `except … as name` bound to different
    exception types in a function (mypyc gives the name the first type), and a class
    attribute an exception subclass overrides without ClassVar (compiled as a slot)."""
    tree = ast.parse((ROOT / path).read_text())
    for fn in _functions(tree):
        bound: dict[str, str] = {}
        for node in ast.walk(fn):
            if isinstance(node, ast.ExceptHandler) and node.name and node.type:
                kind = ast.unparse(node.type)
                assert bound.setdefault(node.name, kind) == kind, (fn.name, node.name)
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        if not any("Error" in ast.unparse(b) or "Exception" in ast.unparse(b) for b in cls.bases):
            continue
        for stmt in cls.body:
            if isinstance(stmt, ast.Assign):
                pytest.fail(f"{cls.name}.{ast.unparse(stmt.targets[0])}: annotate as ClassVar")
            if isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                assert "ClassVar" in ast.unparse(stmt.annotation), cls.name


def test_the_sources_finder_stays_behind_finders_in_front_of_the_path_finder() -> None:
    """atheris (make fuzz) instruments the imports that pass through the finder it puts in
    front of sys.meta_path; the sources finder must not jump ahead of it."""
    code = (
        "import sys, importlib.machinery as m\n"
        "class Front:\n"
        "    def find_spec(self, *a): return None\n"
        "sys.meta_path.insert(0, Front())\n"
        "import sidecar\n"
        "names = [type(f).__name__ if not isinstance(f, type) else f.__name__ for f in sys.meta_path]\n"
        "print(names[0], names.index('_Sources') + 1 == names.index('PathFinder'))"
    )
    assert _run(code, WEFT_PURE="1").split() == ["Front", "True"]
