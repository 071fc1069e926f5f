"""X-Forwarded-Client-Cert for a client certificate the edge verified (Envoy's format:
`Hash=<sha256 hex>;Subject="…";URI=…;DNS=…;Cert="<url-encoded PEM>"`). Values that hold
a separator, a quote or anything but visible ASCII are quoted, and unprintable
characters escaped, so a certificate's text can never break the field or the head."""

from __future__ import annotations

import hashlib
from urllib.parse import quote

DETAILS = ("Subject", "URI", "DNS", "Cert")


def xfcc_line(der: bytes, details: tuple[str, ...]) -> bytes:
    """The whole field line (with CRLF) for the certificate `der`."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    cert = x509.load_der_x509_certificate(der)
    parts = [f"Hash={hashlib.sha256(der).hexdigest()}"]
    if "Subject" in details:
        parts.append(f"Subject={_value(cert.subject.rfc4514_string())}")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        if "URI" in details:
            parts += [
                f"URI={_value(u)}" for u in san.get_values_for_type(x509.UniformResourceIdentifier)
            ]
        if "DNS" in details:
            parts += [f"DNS={_value(d)}" for d in san.get_values_for_type(x509.DNSName)]
    if "Cert" in details:
        pem = cert.public_bytes(Encoding.PEM).decode()
        parts.append(f'Cert="{quote(pem, safe="")}"')
    return b"x-forwarded-client-cert: " + ";".join(parts).encode("ascii") + b"\r\n"


def _value(text: str) -> str:
    if text and all(0x21 <= ord(c) <= 0x7E and c not in ',;="\\' for c in text):
        return text
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif 0x20 <= ord(c) <= 0x7E:
            out.append(c)
        else:
            out.append("".join(f"\\x{b:02x}" for b in c.encode("utf-8")))
    return '"' + "".join(out) + '"'
