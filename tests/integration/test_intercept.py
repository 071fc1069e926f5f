"""Transparent interception in network namespaces the test creates (two pods on one network):
unmodified clients in `a` (curl, a grpcio client) call addresses in `b`, `meshctl init`'s
rules send their connections to a's sidecar, and they cross over mTLS to b's sidecars, whose
namespace captures inbound TCP too. Traffic to addresses outside the mesh passes through
(or is refused with registry-only), a server-first protocol is not held up, IPv6 is
captured, and once the rules are removed the client reaches the addresses directly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.support.netns import Pair, namespace_pair, unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")

PROXY_GID = 1337  # the sidecars run in this group: their own traffic is not captured
APP_PORT = 8080  # b's HTTP app
GRPC_PORT = 50051  # b's gRPC app (service `counter`, its own sidecar on 15007)
OUTSIDE_PORT = 9090  # an HTTP server in b that is not in the mesh
GREET_PORT = 2525  # a server-first protocol, not in the mesh
CP_PORT = 15010
ROOT = Path(__file__).parents[2]
SAY = (
    "import grpc, sys; ch = grpc.insecure_channel(sys.argv[1]); "
    "print(ch.unary_unary('/weft.test.Echo/Say')(b'hi', timeout=10).decode())"
)


class Proc:
    """A process in a namespace whose output the test waits on, line by line."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.text = ""

    async def wait_for(self, needle: str, count: int = 1) -> None:
        with trio.fail_after(30):
            while self.text.count(needle) < count:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    raise AssertionError(f"process exited; output:\n{self.text}")
                self.text += chunk.decode(errors="replace")


class Mesh:
    def __init__(self, net: Pair, tmp: Path) -> None:
        self.net = net
        self.data = tmp / "cp"
        # `meshctl server` records its context: in the test's directory, not the user's
        self.env = {**os.environ, "WEFT_CONTEXT": str(tmp / "context.json")}
        self.meshctl("ca", "init", "--data-dir", str(self.data))

    def meshctl(self, *argv: str, ns: str | None = None) -> str:
        cmd = [sys.executable, "-m", "mesh_ctl", *argv]
        done = subprocess.run(self.net.cmd(ns, *cmd) if ns else cmd, capture_output=True,
                              text=True, timeout=60, env=self.env, cwd=ROOT, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""

    async def start(self, nursery: trio.Nursery, cmd: list[str], log: str = "stderr") -> Proc:
        proc: trio.Process = await nursery.start(
            lambda task_status: trio.run_process(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False, cwd=ROOT,
                env=self.env, task_status=task_status,
            )
        )  # fmt: skip
        return Proc(proc.stderr if log == "stderr" else proc.stdout)

    async def sidecar(
        self, nursery: trio.Nursery, ns: str, service: str, app_port: int, *extra: str
    ) -> Proc:
        net = self.net
        proc = await self.start(nursery, net.cmd(
            ns, sys.executable, "-m", "mesh_ctl", "sidecar", "--service", service,
            "--app-port", str(app_port), "--control-plane", f"{net.ip_b}:{CP_PORT}",
            "--token", self.meshctl("token", "create", service, "--data-dir", str(self.data)),
            # no --advertise: each registers the address it reaches the control plane from
            "--ca-file", str(self.data / "ca" / "root.pem"), "--inbound-address", "0.0.0.0",
            *extra, gid=PROXY_GID,
        ))  # fmt: skip
        await proc.wait_for("ready: inbound mTLS")
        return proc

    async def run(self, nursery: trio.Nursery, *caller_args: str) -> None:
        """Control plane, apps and their sidecars in b (b's rules installed); a's sidecar,
        once it knows b's instances and Service addresses (a's rules are the test's)."""
        net, py = self.net, [sys.executable, "-m"]
        cp = await self.start(nursery, net.cmd(net.b, *py, "mesh_ctl", "server", "--data-dir",
                              str(self.data), "--listen", f"{net.ip_b}:{CP_PORT}",
                              "--http-listen", "off"))  # fmt: skip
        await cp.wait_for("control plane on")
        for argv in (("echo", "b", "::", str(APP_PORT)),
                     ("echo", "outside", "::", str(OUTSIDE_PORT)),
                     ("greet", "0.0.0.0", str(GREET_PORT)),
                     ("grpc", "0.0.0.0", str(GRPC_PORT))):  # fmt: skip
            app = await self.start(nursery, net.cmd(net.b, *py, "tests.support.netns_app", *argv),
                                   log="stdout")  # fmt: skip
            await app.wait_for("ready")
        # b's namespace captures inbound TCP, except what is not in the mesh: its control
        # plane, the admin ports, the second sidecar's inbound port, the outside servers
        skip = f"15000,15002,15007,{CP_PORT},22,{OUTSIDE_PORT},{GREET_PORT}"
        self.meshctl("init", "--proxy-gid", str(PROXY_GID), "--skip-inbound-ports", skip,
                     ns=net.b)  # fmt: skip
        path = self.data / "b-service.yaml"  # b's virtual addresses, as cluster IPs
        path.write_text(
            "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: b}\nspec:\n"
            f"  ports: [{{port: 80}}]\n  addresses: ['{net.vip()}', '{net.vip(ipv6=True)}']\n"
        )
        self.meshctl("apply", "-f", str(path), "--server", f"{net.ip_b}:{CP_PORT}",
                     "--data-dir", str(self.data), ns=net.b)  # fmt: skip
        await self.sidecar(nursery, net.b, "b", APP_PORT)
        await self.sidecar(nursery, net.b, "counter", GRPC_PORT, "--protocol", "GRPC",
                           "--inbound-port", "15007", "--admin-port", "15002",
                           "--outbound-port", "15003")  # fmt: skip
        caller = await self.sidecar(nursery, net.a, "a", 9, "--intercept", *caller_args)
        seen = 1
        while True:  # until a's configuration has b's instances and addresses
            dump = net.run(net.a, "curl", "-sS", "http://127.0.0.1:15000/config_dump").stdout
            if all(s in dump for s in (f'"{net.ip_b}:{APP_PORT}"', f'"{net.ip_b}:{GRPC_PORT}"',
                                       f'"{net.vip()}"')):  # fmt: skip
                return
            seen += 1
            await caller.wait_for("from the control plane in force", seen)

    async def curl(self, url: str, *extra: str) -> dict[str, Any]:
        net = self.net
        done = await trio.to_thread.run_sync(
            lambda: net.run(net.a, "curl", "-sS", "-g", "--max-time", "10", *extra, url)
        )
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result


def _xfcc(got: dict[str, Any]) -> str:
    return str(got["headers"].get("x-forwarded-client-cert", [""])[0])


CALLER_ID = "URI=spiffe://weft.local/ns/default/svc/a"


async def test_unmodified_clients_are_intercepted_and_cross_over_mtls(tmp_path: Path) -> None:
    with namespace_pair() as net:
        mesh = Mesh(net, tmp_path)
        async with trio.open_nursery() as nursery:
            await mesh.run(nursery)
            # Before a's rules, b's inbound capture refuses a plain client at b's app port:
            # only mTLS from the mesh gets through.
            plain = net.run(net.a, "curl", "-sS", "--max-time", "5",
                            f"http://{net.ip_b}:{APP_PORT}/")  # fmt: skip
            assert plain.returncode != 0 and plain.stdout == ""

            mesh.meshctl("init", "--proxy-gid", str(PROXY_GID), "--ipv6", ns=net.a)
            rules = net.run(net.a, "iptables-save", "-t", "nat").stdout
            assert "-A OUTPUT -p tcp -j WEFT_OUTPUT" in rules

            # b's address at its app port: the mesh service b, over mTLS, whatever the Host
            got = await mesh.curl(f"http://{net.ip_b}:{APP_PORT}/hello", "-H", "Host: nobody")
            assert got["pod"] == "b" and got["path"] == "/hello"
            assert CALLER_ID in _xfcc(got), got["headers"]
            # b's virtual addresses (as a cluster IP), IPv4 and IPv6
            for vip in (net.vip(), f"[{net.vip(ipv6=True)}]"):
                got = await mesh.curl(f"http://{vip}/vip")
                assert got["pod"] == "b" and CALLER_ID in _xfcc(got), (vip, got)

            # gRPC from grpcio to the counter service's instance
            said = net.run(net.a, sys.executable, "-c", SAY, f"{net.ip_b}:{GRPC_PORT}")
            assert said.stdout.strip() == "echo: hi", said.stderr
            metrics = net.run(net.a, "curl", "-sS", "http://127.0.0.1:15000/metrics").stdout
            assert 'peer="default/counter:80"' in metrics

            # Outside the mesh: relayed as it is (IPv4 and IPv6)
            for host in (net.ip_b, f"[{net.ip6_b}]"):
                got = await mesh.curl(f"http://{host}:{OUTSIDE_PORT}/out")
                assert got["pod"] == "outside" and not _xfcc(got)
            # A server-first protocol: the greeting arrives without the client speaking
            greeting = net.run(net.a, sys.executable, "-c", (
                "import socket; s = socket.create_connection"
                f"(('{net.ip_b}', {GREET_PORT}), timeout=5); print(s.recv(100).decode())"
            ))  # fmt: skip
            assert greeting.stdout.startswith("220 greeter ready"), greeting.stderr
            metrics = net.run(net.a, "curl", "-sS", "http://127.0.0.1:15000/metrics").stdout
            assert 'route="passthrough"' in metrics

            # The rules gone from a, its client reaches b's app port directly: which b's
            # capture refuses, as it refuses any plain client
            mesh.meshctl("init", "--uninstall", ns=net.a)
            assert "WEFT_" not in net.run(net.a, "iptables-save", "-t", "nat").stdout
            assert "WEFT_" not in net.run(net.a, "ip6tables-save", "-t", "nat").stdout
            plain = net.run(net.a, "curl", "-sS", "--max-time", "5",
                            f"http://{net.ip_b}:{APP_PORT}/")  # fmt: skip
            assert plain.returncode != 0 and plain.stdout == ""
            mesh.meshctl("init", "--uninstall", ns=net.b)  # and b's app is plain again
            got = await mesh.curl(f"http://{net.ip_b}:{APP_PORT}/direct")
            assert got["pod"] == "b" and not _xfcc(got)
            nursery.cancel_scope.cancel()


async def test_registry_only_refuses_addresses_outside_the_mesh(tmp_path: Path) -> None:
    with namespace_pair() as net:
        mesh = Mesh(net, tmp_path)
        async with trio.open_nursery() as nursery:
            await mesh.run(nursery, "--outbound-policy", "registry-only")
            mesh.meshctl("init", "--proxy-gid", str(PROXY_GID), ns=net.a)
            got = await mesh.curl(f"http://{net.ip_b}:{APP_PORT}/in")
            assert got["pod"] == "b"
            refused = net.run(net.a, "curl", "-sS", "--max-time", "10",
                              f"http://{net.ip_b}:{OUTSIDE_PORT}/out")  # fmt: skip
            assert refused.returncode != 0 and refused.stdout == ""
            metrics = net.run(net.a, "curl", "-sS", "http://127.0.0.1:15000/metrics").stdout
            assert 'weft_tcp_denied_total{reason="registry_only"} 1' in metrics
            nursery.cancel_scope.cancel()


async def test_a_sidecar_whose_own_traffic_is_captured_refuses_instead_of_looping(
    tmp_path: Path,
) -> None:
    """The rules name group 1337 but this sidecar runs as root: each connection it opens
    would come back to it. It notices, says so on /ready, and refuses what is intercepted."""
    with namespace_pair() as net:
        mesh = Mesh(net, tmp_path)
        async with trio.open_nursery() as nursery:
            await mesh.run(nursery)
            wrong = await mesh.start(
                nursery,
                net.cmd(
                    net.a,
                    sys.executable,
                    "-m",
                    "mesh_ctl",
                    "sidecar",
                    "--service",
                    "c",
                    "--app-port",
                    "9",
                    "--intercept",
                    "--control-plane",
                    f"{net.ip_b}:{CP_PORT}",
                    "--token",
                    mesh.meshctl("token", "create", "c", "--data-dir", str(mesh.data)),
                    "--ca-file",
                    str(mesh.data / "ca" / "root.pem"),
                    "--inbound-port",
                    "16006",
                    "--outbound-port",
                    "16001",
                    "--admin-port",
                    "16000",
                ),
            )  # fmt: skip  (no gid: root, like the curl below)
            await wrong.wait_for("ready: inbound mTLS")
            mesh.meshctl("init", "--proxy-gid", str(PROXY_GID), "--outbound-port", "16001",
                         "--inbound-port", "16006", "--skip-inbound-ports", "16000", ns=net.a)  # fmt: skip
            refused = net.run(net.a, "curl", "-sS", "--max-time", "5",
                              f"http://{net.ip_b}:{OUTSIDE_PORT}/out")  # fmt: skip
            assert refused.returncode != 0 and refused.stdout == ""
            await wrong.wait_for("own connections are being intercepted")
            ready = net.run(net.a, "curl", "-sS", "http://127.0.0.1:16000/ready").stdout
            assert ready.startswith("not ready: this sidecar's own connections"), ready
            pid = net.run(net.a, "sh", "-c", "ss -tlnpH 'sport = :16001'").stdout
            fds = len(list(Path(f"/proc/{pid.split('pid=')[1].split(',')[0]}/fd").iterdir()))
            assert fds < 200, fds  # no connection chasing its own tail
            nursery.cancel_scope.cancel()
