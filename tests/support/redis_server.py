"""A real redis-server for tests, on 127.0.0.1 and a free port, with nothing on disk.
Tests that need one skip (naming why) where redis-server is not installed; `make test`
installs it from Debian when run as root."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from tests.support.net import free_port


class RedisServer:
    def __init__(self, directory: Path, *, password: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (make test installs it as root)")
        self.port = free_port()
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(directory), "--loglevel", "notice"]  # fmt: skip
        if password is not None:
            args += ["--requirepass", password]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.url = f"redis://{f':{password}@' if password else ''}127.0.0.1:{self.port}"
        assert self.proc.stdout is not None
        seen = []
        for line in self.proc.stdout:  # until it says it listens (or exits)
            seen.append(line)
            if b"Ready to accept connections" in line:
                break
        else:
            raise RuntimeError(f"redis-server exited: {b''.join(seen)!r}")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
