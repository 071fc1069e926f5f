"""Identity.Sign over real gRPC + TLS: first issue with a token, renewal with the SVID,
every refusal, and trust bootstrapped from a bundle file or a pinned fingerprint."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from ca import keystore, tokens
from ca.spiffe import SpiffeId
from control.server import ControlPlane
from sidecar.identity.client import request_svid, trust_from_fingerprint
from sidecar.identity.svid import IdentityError, Svid

ORDERS = SpiffeId("weft.local", "default", "orders")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ControlPlane, Path]]:
    keystore.init(tmp_path, "weft.local", datetime.datetime.now(datetime.UTC))
    srv = ControlPlane(tmp_path, "127.0.0.1:0")
    srv.start()
    yield srv, tmp_path
    srv.stop(0)


def _token(data_dir: Path, identity: SpiffeId, ttl_s: float = 600) -> str:
    now = datetime.datetime.now(datetime.UTC)
    key = keystore.token_key(data_dir)
    return tokens.create(key, identity, now=now, ttl=datetime.timedelta(seconds=ttl_s))


def test_token_then_renewal_with_the_svid(server: tuple[ControlPlane, Path]) -> None:
    srv, data_dir = server
    target = f"127.0.0.1:{srv.port}"
    bundle = (data_dir / "ca" / "root.pem").read_bytes()
    first = request_svid(target, ORDERS, trust_pem=bundle, token=_token(data_dir, ORDERS))
    leaf = x509.load_pem_x509_certificate(first.cert_pem)
    uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [ORDERS.uri]
    assert first.bundle_pem == bundle
    assert first.not_after - first.not_before == datetime.timedelta(hours=24, minutes=5)
    session = keystore.token_key(data_dir), first.session
    assert tokens.verify(*session, now=datetime.datetime.now(datetime.UTC), use="session") == ORDERS
    renewed = request_svid(target, ORDERS, trust_pem=bundle, current=first)
    assert renewed.cert_pem != first.cert_pem and renewed.key_pem != first.key_pem
    # Renewal proves the identity with the certificate: it cannot ask for another one.
    web = SpiffeId("weft.local", "default", "web")
    with pytest.raises(IdentityError, match=r"INVALID_ARGUMENT: the CSR asks for .*web but"):
        request_svid(target, web, trust_pem=bundle, current=first)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: _token(d, ORDERS, ttl_s=-1), "UNAUTHENTICATED: token for .* expired"),
        (lambda d: _token(d, ORDERS)[:-4] + "AAAA", "UNAUTHENTICATED: token signature"),
        (lambda d: "", "UNAUTHENTICATED: no proof of identity"),
        (lambda d: _token(d, SpiffeId("weft.local", "default", "web")),
         "INVALID_ARGUMENT: the CSR asks for spiffe://weft.local/ns/default/svc/orders but"),
    ],
)  # fmt: skip
def test_refusals_say_why(server: tuple[ControlPlane, Path], make: object, reason: str) -> None:
    srv, data_dir = server
    bundle = (data_dir / "ca" / "root.pem").read_bytes()
    with pytest.raises(IdentityError, match=reason):
        request_svid(f"127.0.0.1:{srv.port}", ORDERS, trust_pem=bundle, token=make(data_dir))  # type: ignore[operator]


def test_trust_comes_from_the_pinned_fingerprint_only(
    server: tuple[ControlPlane, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    srv, data_dir = server
    target = f"127.0.0.1:{srv.port}"
    ca = keystore.load(data_dir, datetime.datetime.now(datetime.UTC))
    pinned = trust_from_fingerprint(target, keystore.fingerprint(ca.roots[0].cert))
    svid = request_svid(target, ORDERS, trust_pem=pinned, token=_token(data_dir, ORDERS))
    assert svid.identity == ORDERS
    with pytest.raises(IdentityError, match="no certificate the control plane presented"):
        trust_from_fingerprint(target, "sha256:" + "00" * 32)
    # A bundle from another CA does not let the channel up at all.
    other = tmp_path_factory.mktemp("other")
    keystore.init(other, "weft.local", datetime.datetime.now(datetime.UTC))
    with pytest.raises(IdentityError, match="UNAVAILABLE"):
        request_svid(
            target, ORDERS, trust_pem=(other / "ca" / "root.pem").read_bytes(),
            token=_token(data_dir, ORDERS), timeout_s=3,
        )  # fmt: skip


def test_renewal_needs_a_verifying_svid_and_its_key(server: tuple[ControlPlane, Path]) -> None:
    import grpc
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from control.api import CONTROL_PLANE_HOST
    from mesh_ctl.api import identity_pb2, identity_pb2_grpc
    from sidecar.identity.client import csr_for, new_key

    srv, data_dir = server
    bundle = (data_dir / "ca" / "root.pem").read_bytes()
    target = f"127.0.0.1:{srv.port}"
    svid = request_svid(target, ORDERS, trust_pem=bundle, token=_token(data_dir, ORDERS))
    csr = csr_for(new_key(), ORDERS)
    stranger = ec.generate_private_key(ec.SECP256R1()).sign(csr, ec.ECDSA(hashes.SHA256()))
    creds = grpc.ssl_channel_credentials(root_certificates=bundle)
    options = [("grpc.ssl_target_name_override", CONTROL_PLANE_HOST)]
    with grpc.secure_channel(target, creds, options=options) as channel:
        stub = identity_pb2_grpc.IdentityStub(channel)
        chain = svid.cert_pem + svid.chain_pem
        with pytest.raises(grpc.RpcError) as forged:
            stub.Sign(identity_pb2.SignRequest(csr=csr, current_chain=chain, proof=stranger))
        with pytest.raises(grpc.RpcError) as foreign:
            stub.Sign(identity_pb2.SignRequest(csr=csr, current_chain=svid.chain_pem, proof=b"x"))
    assert forged.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not signed by the current SVID's key" in forged.value.details()
    assert foreign.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "does not verify" in foreign.value.details()


def test_meshctl_server_issues_svids_and_stops_on_sigterm(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    from tests.support.net import free_port
    from tests.support.plane import start_server

    def meshctl(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "mesh_ctl", *args, "--data-dir", str(tmp_path)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip

    meshctl("ca", "init")
    token = meshctl("token", "create", "orders").strip().splitlines()[-1]
    port = free_port()
    proc = start_server(tmp_path, port)
    try:
        bundle = (tmp_path / "ca" / "root.pem").read_bytes()
        svid = request_svid(f"127.0.0.1:{port}", ORDERS, trust_pem=bundle, token=token)
        assert svid.identity == ORDERS
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()


async def test_the_identity_helper_process_trusts_a_pinned_root_and_says_why_it_fails(
    server: tuple[ControlPlane, Path],
) -> None:
    from sidecar.identity.agent import answer
    from sidecar.identity.fetch import fetch_svid
    from sidecar.identity.svid import SvidRequest

    srv, data_dir = server
    ca = keystore.load(data_dir, datetime.datetime.now(datetime.UTC))
    request = SvidRequest(
        control_plane=f"127.0.0.1:{srv.port}", namespace="default", service="orders",
        ca_fingerprint=keystore.fingerprint(ca.roots[0].cert), token=_token(data_dir, ORDERS),
    )  # fmt: skip
    svid = await fetch_svid(request)
    assert svid.identity == ORDERS and svid.bundle_pem == ca.bundle_pem
    assert Svid.from_json(svid.to_json()) == svid
    renewed = await fetch_svid(dataclasses.replace(request, token="", current=svid))
    assert renewed.identity == ORDERS and renewed.cert_pem != svid.cert_pem
    with pytest.raises(IdentityError, match="UNAUTHENTICATED: token signature"):
        await fetch_svid(dataclasses.replace(request, token=request.token[:-4] + "AAAA"))
    with pytest.raises(IdentityError, match="holds no PEM certificate"):
        await fetch_svid(dataclasses.replace(request, trust_pem=b"not a bundle"))
    with pytest.raises(IdentityError, match="--ca-file or --ca-fingerprint"):
        await fetch_svid(dataclasses.replace(request, ca_fingerprint=None))
    assert answer("{not json")["error"].startswith("bad request to the identity helper")
    assert "'service'" in answer('{"control_plane": "x", "namespace": "default"}')["error"]


def test_the_control_plane_renews_its_own_serving_certificate(tmp_path: Path) -> None:
    import ssl
    import time

    from control.api import CONTROL_PLANE_HOST

    keystore.init(tmp_path, "weft.local", datetime.datetime.now(datetime.UTC))
    srv = ControlPlane(tmp_path, "127.0.0.1:0", cert_ttl=datetime.timedelta(seconds=3))
    srv.start()
    try:
        ctx = ssl.create_default_context(cadata=(tmp_path / "ca" / "root.pem").read_text())
        ctx.set_alpn_protocols(["h2"])

        def served() -> x509.Certificate:
            import socket

            with (
                socket.create_connection(("127.0.0.1", srv.port), timeout=5) as raw,
                ctx.wrap_socket(raw, server_hostname=CONTROL_PLANE_HOST) as tls,
            ):
                der = tls.getpeercert(binary_form=True)
            assert der is not None
            return x509.load_der_x509_certificate(der)

        first = served()
        time.sleep(2.1)  # waiting for wall-clock time itself: 2/3 of the 3-second life
        second = served()
        svid = request_svid(f"127.0.0.1:{srv.port}", ORDERS,
                            trust_pem=(tmp_path / "ca" / "root.pem").read_bytes(),
                            token=_token(tmp_path, ORDERS))  # fmt: skip
    finally:
        srv.stop(0)
    assert second.serial_number != first.serial_number
    assert second.not_valid_after_utc > first.not_valid_after_utc
    assert svid.identity == ORDERS  # gRPC clients connect on the renewed certificate
