"""Where a redirected connection was going: SO_ORIGINAL_DST (IPv4) and
IP6T_SO_ORIGINAL_DST (IPv6) read the destination conntrack kept before REDIRECT."""

from __future__ import annotations

import socket

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h


def parse_sockaddr(raw: bytes) -> tuple[str, int] | None:
    """(address, port) of a `sockaddr_in` or `sockaddr_in6`; None for anything else."""
    if len(raw) >= 8 and int.from_bytes(raw[:2], "little") == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), int.from_bytes(raw[2:4], "big")
    if len(raw) >= 24 and int.from_bytes(raw[:2], "little") == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), int.from_bytes(raw[2:4], "big")
    return None


def original_destination(sock: socket.socket) -> tuple[str, int] | None:
    """The destination the client dialled; None when the connection was not tracked
    (no netfilter: it came to the listener directly)."""
    try:
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
        else:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    return parse_sockaddr(raw)
