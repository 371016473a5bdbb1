"""TCP MD5 signatures (RFC 2385) on a BGP connection's socket: Linux's TCP_MD5SIG.

The key is set per peer address on the listening socket (before ``listen``) and on the
connecting socket (before ``connect``); the kernel then signs every segment to that peer
and drops unsigned or badly signed ones. A kernel without TCP_MD5SIG refuses the option:
``set_tcp_md5`` raises and the caller does not run the session unsigned (fail closed).
"""
from __future__ import annotations

import ipaddress
import socket
import struct

TCP_MD5SIG = getattr(socket, "TCP_MD5SIG", 14)   # linux/tcp.h
TCP_MD5SIG_MAXKEYLEN = 80
_SOCKADDR_STORAGE = 128


def md5sig_option(peer: str, key: bytes) -> bytes:
    """``struct tcp_md5sig`` for ``peer`` (an IPv4 or IPv6 address) and ``key``."""
    if not 1 <= len(key) <= TCP_MD5SIG_MAXKEYLEN:
        raise ValueError(f"a TCP MD5 key is 1 to {TCP_MD5SIG_MAXKEYLEN} bytes (got {len(key)})")
    addr = ipaddress.ip_address(peer)
    if addr.version == 4:
        sa = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 0) + addr.packed
    else:
        sa = struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", 0, 0) + addr.packed + b"\0" * 4
    sa = sa.ljust(_SOCKADDR_STORAGE, b"\0")
    # flags, prefix length (0: the one address), key length, ifindex, key
    return sa + struct.pack("=BBHI", 0, 0, len(key), 0) + key.ljust(TCP_MD5SIG_MAXKEYLEN, b"\0")


def set_tcp_md5(sk: socket.socket, peer: str, key: bytes) -> None:
    """Sign this socket's segments to ``peer`` with ``key``; OSError where the kernel refuses."""
    sk.setsockopt(socket.IPPROTO_TCP, TCP_MD5SIG, md5sig_option(peer, key))


def md5_supported(peer: str = "192.0.2.1") -> str | None:
    """None when this kernel takes TCP_MD5SIG, else why not (for a clear error)."""
    fam = socket.AF_INET6 if ":" in peer else socket.AF_INET
    try:
        with socket.socket(fam, socket.SOCK_STREAM) as sk:
            set_tcp_md5(sk, peer, b"probe")
    except OSError as e:
        return f"the kernel refuses TCP_MD5SIG ({e.strerror or e}): CONFIG_TCP_MD5SIG missing?"
    return None
