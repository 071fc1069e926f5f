"""Session-wide test settings."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _own_meshctl_context(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`meshctl server` and `up` save the current context; the tests' own must not touch the
    user's (~/.config/weft), and subprocesses inherit the variable."""
    os.environ["WEFT_CONTEXT"] = str(tmp_path_factory.mktemp("meshctl") / "context.json")


_EXIT: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT.append(int(exitstatus))


def pytest_unconfigure(config: pytest.Config) -> None:
    """After the summary: a thread some test left running (a gRPC server's worker in a
    handler that never returns) would keep the interpreter from exiting, and `make test`
    from ever finishing. Name it, with every thread's stack, and exit with the result."""
    import faulthandler
    import sys
    import threading

    stuck = [t for t in threading.enumerate()
             if t is not threading.main_thread() and not t.daemon and t.is_alive()]  # fmt: skip
    for t in stuck:
        t.join(timeout=10)
    stuck = [t for t in stuck if t.is_alive()]
    if stuck and _EXIT:
        names = ", ".join(t.name for t in stuck)
        sys.stderr.write(f"\nthreads still running after the tests: {names}; their stacks:\n")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(_EXIT[0])
