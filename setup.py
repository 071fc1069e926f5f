"""The package build: with mypyc and a C compiler at hand, the data path is compiled.

`pip install .` compiles the modules `compiled_sources` lists into C extensions beside
their sources (mypy and the libraries they are typed against come from the build requirements);
`WEFT_PURE=1`, or no C compiler, builds the pure-Python package, which runs the same code
unchanged. At run time `sidecar.build` loads the compiled modules only while they match
their sources (docs/performance.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
# The request path: parsers, routing, filters, forwarding, transports, pools, metrics and
# the access log. Configuration parsing and the control plane stay interpreted.
COMPILED_PACKAGES = ("protocol", "http", "transport", "upstream", "filters", "tcp")
COMPILED_MODULES = ("errors", "authz", "config/model", "config/headerops",
                    "config/snapshot", "config/split", "observe/accesslog",
                    "observe/metrics", "observe/spans", "observe/tracecontext",
                    "observe/tracing")  # fmt: skip
# Off the request path, and what mypyc cannot compile (except*) or would check too strictly
# (h11 hands bodies typed bytes as bytearrays).
INTERPRETED = ("tcp/relay", "upstream/call")
MANIFEST = "sidecar/compiled.json"  # what was compiled, with each source's hash


def compiled_sources() -> list[str]:
    paths = [f"sidecar/{m}.py" for m in COMPILED_MODULES]
    for package in COMPILED_PACKAGES:
        for path in sorted((HERE / "sidecar" / package).glob("*.py")):
            name = f"{package}/{path.stem}"
            if path.stem != "__init__" and name not in INTERPRETED:
                paths.append(f"sidecar/{name}.py")
    return paths


class BuildExt(build_ext):
    """Builds the extensions, then writes the manifest beside them: into the source tree
    for an in-place build (`make compile`), into the wheel's tree otherwise."""

    def run(self) -> None:
        if self.inplace:  # a module compiled before may be interpreted now
            for old in HERE.glob("sidecar/**/*.so"):
                old.unlink()
        super().run()
        if self.extensions:
            lib = Path(self.get_ext_fullpath("sidecar.native__mypyc")).parent.parent
            hashes = {p: hashlib.sha256((HERE / p).read_bytes()).hexdigest() for p in SOURCES}
            (lib / MANIFEST).write_text(json.dumps(hashes, indent=0) + "\n")


def _ext_modules() -> list[Any]:  # mypyc's Extensions (setuptools' or distutils' class)
    if os.environ.get("WEFT_PURE") == "1":
        return []
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        print(f"weft: no C compiler ({compiler}): building pure Python", file=sys.stderr)
        return []
    from mypyc.build import mypycify

    os.chdir(HERE)  # mypyc names modules by their paths from here
    # One group, its shared library inside the package (sidecar/native__mypyc…so), so
    # an editable install finds it from any directory. With multi_file, mypyc writes the
    # group's header beside that library but compiles the module files one level up.
    extensions = mypycify(
        SOURCES, opt_level="3", debug_level="0", multi_file=True, group_name="sidecar.native"
    )
    for extension in extensions:
        extension.include_dirs.append("build/sidecar")
        if extension.name.endswith("native__mypyc") and os.name == "posix":
            # Export only the module's init function: no symbol table of ~4,700 functions
            # to load at every start, and direct calls between the modules instead of calls
            # through the PLT; link-time optimization inlines mypyc's runtime helpers into
            # the modules; relative relocations packed (DT_RELR) where the linker can.
            # Together: 165,542 → 161,276 instructions per edge request, and the library's
            # first segment 756 → 29 KiB.
            lto = _builds_with(compiler, "-flto=auto")
            extension.extra_compile_args += ["-fvisibility=hidden", *lto]
            relr = _builds_with(compiler, "-Wl,-z,pack-relative-relocs")
            extension.extra_link_args += [*lto, *relr]
    return extensions


def _builds_with(compiler: str, *flags: str) -> list[str]:
    """`flags` if `compiler` builds a shared library with them without a warning (older
    linkers ignore a `-z` option they do not know, saying so), else none of them."""
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp, "probe.c"), Path(tmp, "probe.so")
        src.write_text("int weft_probe(void) { return 0; }\n")
        cmd = [compiler, "-shared", "-fPIC", "-Werror", "-Wl,--fatal-warnings", *flags,
               str(src), "-o", str(out)]  # fmt: skip
        ok = subprocess.run(cmd, check=False, capture_output=True).returncode == 0
    return list(flags) if ok else []


SOURCES = compiled_sources()

if __name__ == "__main__":
    setup(ext_modules=_ext_modules(), cmdclass={"build_ext": BuildExt})
