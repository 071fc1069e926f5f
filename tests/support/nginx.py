"""nginx as a real peer: started on a configuration's `http` block, stopped afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


@asynccontextmanager
async def nginx(tmp: Path, http_block: str) -> AsyncIterator[None]:
    """Run nginx with `http_block` as its `http { … }` until the block ends; returns once
    its sockets are bound (it logs "start worker process" then)."""
    assert NGINX is not None
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log stderr notice;
events {{ worker_connections 256; }}
http {{
{http_block}
}}
""")
    proc = await trio.lowlevel.open_process([NGINX, "-c", str(conf)], stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        log = b""
        with trio.fail_after(10):
            while b"start worker process" not in log:
                chunk = await proc.stderr.receive_some(4096)
                assert chunk, log.decode()
                log += chunk
        yield
    finally:
        proc.terminate()
        with trio.fail_after(5):
            await proc.wait()
