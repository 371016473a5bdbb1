"""XFRM netlink messages (NETLINK_XFRM = 6) for the kernel ESP data path.

pyroute2 has no XFRM state/policy API, so the messages are marshalled here with
``ctypes`` structures that mirror ``include/uapi/linux/xfrm.h`` (native layout and
alignment, like the kernel's own), sent over a plain ``AF_NETLINK`` socket.

Everything cgwd installs is tagged: reqid and if_id (or mark, for a VTI) are
``TAG_BASE | n`` with ``n`` handed out by :data:`TAGS` (one per kernel data path, unique in
the process by construction), so cleanup after a crash finds every state and policy
cgwd may have used by the range alone (:func:`is_ours`) and touches nothing else.

Addresses are IPv4 or IPv6 (outer: the states and the policies' templates; inner: the
policies' selectors; one tunnel-mode state carries inner packets of both families, as
strongSwan's do).
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
import struct
import threading

from cgwd.ipsec_sa import UDP_ENCAP_ESPINUDP

NETLINK_XFRM = 6

XFRM_MSG_NEWSA = 0x10
XFRM_MSG_DELSA = 0x11
XFRM_MSG_GETSA = 0x12
XFRM_MSG_NEWPOLICY = 0x13
XFRM_MSG_DELPOLICY = 0x14
XFRM_MSG_GETPOLICY = 0x15
XFRM_MSG_EXPIRE = 0x18
XFRM_MSG_UPDPOLICY = 0x19
XFRM_MSG_FLUSHSA = 0x1C
XFRM_MSG_FLUSHPOLICY = 0x1D
XFRM_MSG_UPDSA = 0x1A

XFRMGRP_EXPIRE = 2

XFRMA_ALG_AUTH = 1
XFRMA_ALG_CRYPT = 2
XFRMA_ENCAP = 4
XFRMA_TMPL = 5
XFRMA_SRCADDR = 13
XFRMA_ALG_AEAD = 18
XFRMA_ALG_AUTH_TRUNC = 20
XFRMA_MARK = 21
XFRMA_REPLAY_ESN_VAL = 23
XFRMA_IF_ID = 31

XFRM_POLICY_IN = 0
XFRM_POLICY_OUT = 1
XFRM_POLICY_FWD = 2
XFRM_MODE_TUNNEL = 1
XFRM_STATE_AF_UNSPEC = 32  # tunnel mode: inner packets of either family (selector family 0)
XFRM_INF = 0xFFFFFFFFFFFFFFFF

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLMSG_ERROR = 2
NLMSG_DONE = 3

TAG_BASE = 0x63670000  # "cg": reqid / if_id range owned by cgwd
TAG_MASK = 0xFFFF0000
TAG_FIRST = 1
TAG_LAST = 0xFFFE
PROBE_TAG = TAG_BASE | 0xFFFF  # the capability probe's throwaway states

ENC_NAMES = {"aes128": "cbc(aes)", "aes256": "cbc(aes)"}
AEAD_NAMES = {"aes128gcm16": "rfc4106(gcm(aes))", "aes256gcm16": "rfc4106(gcm(aes))"}
AUTH_NAMES = {"sha1": "hmac(sha1)", "sha256": "hmac(sha256)", "sha384": "hmac(sha384)", "sha512": "hmac(sha512)"}

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class xfrm_address_t(ctypes.Union):
    _fields_ = [("a4", u8 * 4), ("a6", u32 * 4)]


class xfrm_selector(ctypes.Structure):
    _fields_ = [
        ("daddr", xfrm_address_t), ("saddr", xfrm_address_t),
        ("dport", u16), ("dport_mask", u16), ("sport", u16), ("sport_mask", u16),
        ("family", u16), ("prefixlen_d", u8), ("prefixlen_s", u8), ("proto", u8),
        ("ifindex", ctypes.c_int), ("user", u32),
    ]


class xfrm_id(ctypes.Structure):
    _fields_ = [("daddr", xfrm_address_t), ("spi", u8 * 4), ("proto", u8)]


class xfrm_lifetime_cfg(ctypes.Structure):
    _fields_ = [(n, u64) for n in (
        "soft_byte_limit", "hard_byte_limit", "soft_packet_limit", "hard_packet_limit",
        "soft_add_expires_seconds", "hard_add_expires_seconds",
        "soft_use_expires_seconds", "hard_use_expires_seconds")]


class xfrm_lifetime_cur(ctypes.Structure):
    _fields_ = [("bytes", u64), ("packets", u64), ("add_time", u64), ("use_time", u64)]


class xfrm_stats(ctypes.Structure):
    _fields_ = [("replay_window", u32), ("replay", u32), ("integrity_failed", u32)]


class xfrm_usersa_info(ctypes.Structure):
    _fields_ = [
        ("sel", xfrm_selector), ("id", xfrm_id), ("saddr", xfrm_address_t),
        ("lft", xfrm_lifetime_cfg), ("curlft", xfrm_lifetime_cur), ("stats", xfrm_stats),
        ("seq", u32), ("reqid", u32), ("family", u16), ("mode", u8),
        ("replay_window", u8), ("flags", u8),
    ]


class xfrm_usersa_id(ctypes.Structure):
    _fields_ = [("daddr", xfrm_address_t), ("spi", u8 * 4), ("family", u16), ("proto", u8)]


class xfrm_userpolicy_info(ctypes.Structure):
    _fields_ = [
        ("sel", xfrm_selector), ("lft", xfrm_lifetime_cfg), ("curlft", xfrm_lifetime_cur),
        ("priority", u32), ("index", u32), ("dir", u8), ("action", u8), ("flags", u8), ("share", u8),
    ]


class xfrm_userpolicy_id(ctypes.Structure):
    _fields_ = [("sel", xfrm_selector), ("index", u32), ("dir", u8)]


class xfrm_user_tmpl(ctypes.Structure):
    _fields_ = [
        ("id", xfrm_id), ("family", u16), ("saddr", xfrm_address_t), ("reqid", u32),
        ("mode", u8), ("share", u8), ("optional", u8),
        ("aalgos", u32), ("ealgos", u32), ("calgos", u32),
    ]


class xfrm_encap_tmpl(ctypes.Structure):
    _fields_ = [("encap_type", u16), ("encap_sport", u8 * 2), ("encap_dport", u8 * 2),
                ("encap_oa", xfrm_address_t)]


class xfrm_user_expire(ctypes.Structure):
    _fields_ = [("state", xfrm_usersa_info), ("hard", u8)]


class xfrm_mark(ctypes.Structure):
    _fields_ = [("v", u32), ("m", u32)]


# Sizes as in the kernel ABI (x86_64 and every other Linux ABI with 8-byte u64 alignment).
assert ctypes.sizeof(xfrm_selector) == 56
assert ctypes.sizeof(xfrm_usersa_info) == 224
assert ctypes.sizeof(xfrm_userpolicy_info) == 168
assert ctypes.sizeof(xfrm_user_tmpl) == 64
assert ctypes.sizeof(xfrm_usersa_id) == 24
assert ctypes.sizeof(xfrm_userpolicy_id) == 64


class TagAllocator:
    """Hands out the tags (``TAG_BASE | n``, n in 1..0xFFFE) of the kernel data paths of
    this process: unique by construction (no two live data paths share one), lowest free
    first. A crashed run's tags are found by :func:`is_ours`, not remembered."""

    def __init__(self, first: int = TAG_FIRST, last: int = TAG_LAST) -> None:
        self._first = first
        self._last = last
        self._used: set[int] = set()
        self._lock = threading.Lock()
        self.swept = False  # stale state of an earlier run removed (once per process)

    def acquire(self) -> int:
        with self._lock:
            for n in range(self._first, self._last + 1):
                tag = TAG_BASE | n
                if tag not in self._used:
                    self._used.add(tag)
                    return tag
        raise OSError(errno.ENOSPC, "no free XFRM tag (65534 kernel data paths in one process)")

    def release(self, tag: int) -> None:
        with self._lock:
            self._used.discard(tag)

    def in_use(self) -> set[int]:
        with self._lock:
            return set(self._used)


#: The process's tags.
TAGS = TagAllocator()


def is_ours(reqid_or_ifid: int | None) -> bool:
    return reqid_or_ifid is not None and (reqid_or_ifid & TAG_MASK) == TAG_BASE


def family_of(address: str) -> int:
    """AF_INET or AF_INET6 for an address in text form."""
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET


def _addr(a: str) -> xfrm_address_t:
    x = xfrm_address_t()
    ip = ipaddress.ip_address(a)
    ctypes.memmove(ctypes.addressof(x), ip.packed, len(ip.packed))
    return x


def _addr_text(x: xfrm_address_t, family: int) -> str:
    raw = bytes(x)
    if family == socket.AF_INET6:
        return str(ipaddress.IPv6Address(raw[:16]))
    return str(ipaddress.IPv4Address(raw[:4]))


def _be16(v: int) -> list[int]:
    return list(struct.pack(">H", v))


def _be32(v: int) -> list[int]:
    return list(struct.pack(">I", v))


def _align4(n: int) -> int:
    return (n + 3) & ~3


def nla(atype: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, atype) + payload + b"\0" * (_align4(n) - n)


def nlmsg(mtype: int, flags: int, body: bytes, seq: int = 0, pid: int = 0) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), mtype, flags, seq, pid) + body


def _infinite_lft() -> xfrm_lifetime_cfg:
    lft = xfrm_lifetime_cfg()
    for name, _ in xfrm_lifetime_cfg._fields_:
        setattr(lft, name, XFRM_INF)
    return lft


def _algo(name: str, key: bytes) -> bytes:
    return struct.pack("=64sI", name.encode(), len(key) * 8) + key


def _algo_trunc(name: str, key: bytes, trunc_bits: int) -> bytes:
    return struct.pack("=64sII", name.encode(), len(key) * 8, trunc_bits) + key


def _tag_attr(if_id: int | None, mark: int | None) -> bytes:
    out = b""
    if if_id is not None:
        out += nla(XFRMA_IF_ID, struct.pack("=I", if_id))
    if mark is not None:
        out += nla(XFRMA_MARK, bytes(xfrm_mark(mark, 0xFFFFFFFF)))
    return out


def newsa(
    *,
    src: str,
    dst: str,
    spi: int,
    encryption: str,
    integrity: str | None,
    enc_key: bytes,
    integ_key: bytes = b"",
    icv_bits: int = 0,
    reqid: int,
    replay_window: int = 0,
    lifetime=None,
    encap: tuple[int, int] | None = None,
    if_id: int | None = None,
    mark: int | None = None,
    seq: int = 0,
    flags: int = NLM_F_REQUEST | NLM_F_ACK,
) -> bytes:
    """XFRM_MSG_NEWSA for an ESP tunnel-mode state.

    ``enc_key`` for GCM is key || salt (what the kernel's rfc4106 wants).
    ``replay_window`` > 0 for inbound states: sent as XFRMA_REPLAY_ESN_VAL (the u8
    field in xfrm_usersa_info cannot hold 1024), without the ESN flag and without the
    (all-zero) bitmap, exactly as iproute2 does.
    ``lifetime``: a :class:`cgwd.esp.sa.Lifetime` (0 = unlimited); its packet limits
    (the 32-bit sequence number) become the state's soft/hard packet limits, so that the
    kernel reports a sequence number running out with an expire event.
    """
    info = xfrm_usersa_info()
    # selector left empty (family 0) with XFRM_STATE_AF_UNSPEC: the tunnel carries inner
    # packets of either family over this state's outer family (as strongSwan does)
    info.id.daddr = _addr(dst)
    info.id.spi[:] = _be32(spi)
    info.id.proto = socket.IPPROTO_ESP
    info.saddr = _addr(src)
    info.lft = _infinite_lft()
    if lifetime is not None:
        for attr, val in (
            ("soft_add_expires_seconds", lifetime.soft_seconds),
            ("hard_add_expires_seconds", lifetime.hard_seconds),
            ("soft_byte_limit", lifetime.soft_bytes),
            ("hard_byte_limit", lifetime.hard_bytes),
            ("soft_packet_limit", lifetime.soft_packets),
            ("hard_packet_limit", lifetime.hard_packets),
        ):
            if val:
                setattr(info.lft, attr, int(val))
        if not lifetime.soft_seconds:
            info.lft.soft_add_expires_seconds = 0
        if not lifetime.hard_seconds:
            info.lft.hard_add_expires_seconds = 0
    else:
        info.lft.soft_add_expires_seconds = 0
        info.lft.hard_add_expires_seconds = 0
    info.lft.soft_use_expires_seconds = 0
    info.lft.hard_use_expires_seconds = 0
    info.reqid = reqid
    info.family = family_of(dst)
    info.mode = XFRM_MODE_TUNNEL
    info.flags = XFRM_STATE_AF_UNSPEC
    info.replay_window = 0
    attrs = b""
    if encryption in AEAD_NAMES:
        attrs += nla(XFRMA_ALG_AEAD, _algo_trunc(AEAD_NAMES[encryption], enc_key, 128))
    else:
        attrs += nla(XFRMA_ALG_AUTH_TRUNC, _algo_trunc(AUTH_NAMES[integrity], integ_key, icv_bits))
        attrs += nla(XFRMA_ALG_CRYPT, _algo(ENC_NAMES[encryption], enc_key))
    if encap is not None:
        et = xfrm_encap_tmpl()
        et.encap_type = UDP_ENCAP_ESPINUDP
        et.encap_sport[:] = _be16(encap[0])
        et.encap_dport[:] = _be16(encap[1])
        attrs += nla(XFRMA_ENCAP, bytes(et))
    if replay_window:
        bmp_len = (replay_window + 31) // 32
        attrs += nla(XFRMA_REPLAY_ESN_VAL, struct.pack("=6I", bmp_len, 0, 0, 0, 0, replay_window))
    attrs += _tag_attr(if_id, mark)
    return nlmsg(XFRM_MSG_NEWSA, flags, bytes(info) + attrs, seq)


def delsa(*, dst: str, spi: int, src: str | None = None, mark: int | None = None, seq: int = 0) -> bytes:
    sid = xfrm_usersa_id()
    sid.daddr = _addr(dst)
    sid.spi[:] = _be32(spi)
    sid.family = family_of(dst)
    sid.proto = socket.IPPROTO_ESP
    attrs = nla(XFRMA_SRCADDR, bytes(_addr(src))) if src else b""
    if mark is not None:
        attrs += nla(XFRMA_MARK, bytes(xfrm_mark(mark, 0xFFFFFFFF)))
    return nlmsg(XFRM_MSG_DELSA, NLM_F_REQUEST | NLM_F_ACK, bytes(sid) + attrs, seq)


def _any_selector(family: int = socket.AF_INET) -> xfrm_selector:
    sel = xfrm_selector()
    sel.family = family  # 0.0.0.0/0 <-> 0.0.0.0/0 (or ::/0 <-> ::/0), any protocol/port
    return sel


def newpolicy(
    *,
    direction: int,
    tmpl_src: str,
    tmpl_dst: str,
    reqid: int,
    if_id: int | None = None,
    mark: int | None = None,
    priority: int = 0,
    update: bool = False,
    inner_family: int = socket.AF_INET,
    seq: int = 0,
) -> bytes:
    """Route-based policy any <-> any of ``inner_family`` (0.0.0.0/0 or ::/0) in
    ``direction`` with an ESP tunnel template (tmpl_src -> tmpl_dst are the outer
    addresses of that direction, of either family)."""
    pol = xfrm_userpolicy_info()
    pol.sel = _any_selector(inner_family)
    pol.lft = _infinite_lft()  # byte/packet limits infinite, no time limits (as iproute2)
    for attr in ("soft_add_expires_seconds", "hard_add_expires_seconds",
                 "soft_use_expires_seconds", "hard_use_expires_seconds"):
        setattr(pol.lft, attr, 0)
    pol.priority = priority
    pol.dir = direction
    tmpl = xfrm_user_tmpl()
    tmpl.id.daddr = _addr(tmpl_dst)
    tmpl.id.proto = socket.IPPROTO_ESP
    tmpl.family = family_of(tmpl_dst)
    tmpl.saddr = _addr(tmpl_src)
    tmpl.reqid = reqid
    tmpl.mode = XFRM_MODE_TUNNEL
    tmpl.aalgos = tmpl.ealgos = tmpl.calgos = 0xFFFFFFFF
    attrs = nla(XFRMA_TMPL, bytes(tmpl)) + _tag_attr(if_id, mark)
    mtype = XFRM_MSG_UPDPOLICY if update else XFRM_MSG_NEWPOLICY
    flags = NLM_F_REQUEST | NLM_F_ACK
    return nlmsg(mtype, flags, bytes(pol) + attrs, seq)


def delpolicy(*, direction: int, if_id: int | None = None, mark: int | None = None,
              inner_family: int = socket.AF_INET, index: int = 0, mark_mask: int | None = None,
              seq: int = 0) -> bytes:
    """Delete the any <-> any policy of ``inner_family`` in ``direction`` with that tag, or
    (``index``) the policy with that index (``if_id``/``mark`` must be the policy's own)."""
    pid = xfrm_userpolicy_id()
    if not index:
        pid.sel = _any_selector(inner_family)
    pid.index = index
    pid.dir = direction
    attrs = b""
    if if_id is not None:
        attrs += nla(XFRMA_IF_ID, struct.pack("=I", if_id))
    if mark is not None:
        attrs += nla(XFRMA_MARK, bytes(xfrm_mark(mark, 0xFFFFFFFF if mark_mask is None else mark_mask)))
    return nlmsg(XFRM_MSG_DELPOLICY, NLM_F_REQUEST | NLM_F_ACK, bytes(pid) + attrs, seq)


def dumppolicy(seq: int = 0) -> bytes:
    return nlmsg(XFRM_MSG_GETPOLICY, NLM_F_REQUEST | NLM_F_DUMP, b"", seq)


def getsa(*, dst: str, spi: int, mark: int | None = None, seq: int = 0) -> bytes:
    m = delsa(dst=dst, spi=spi, mark=mark, seq=seq)
    return struct.pack("=IHH", len(m), XFRM_MSG_GETSA, NLM_F_REQUEST) + m[8:]


def dumpsa(seq: int = 0) -> bytes:
    return nlmsg(XFRM_MSG_GETSA, NLM_F_REQUEST | NLM_F_DUMP, b"", seq)


# ---------------------------------------------------------------- parsing
def iter_messages(data: bytes):
    """(type, flags, seq, body) for every netlink message in ``data``."""
    off = 0
    while off + 16 <= len(data):
        length, mtype, flags, seq, _pid = struct.unpack_from("=IHHII", data, off)
        if length < 16:
            break
        yield mtype, flags, seq, data[off + 16 : off + length]
        off += _align4(length)


def iter_attrs(data: bytes):
    off = 0
    while off + 4 <= len(data):
        length, atype = struct.unpack_from("=HH", data, off)
        if length < 4:
            break
        yield atype & 0x3FFF, data[off + 4 : off + length]
        off += _align4(length)


def parse_usersa(body: bytes) -> dict:
    """Secret-free summary of an xfrm_usersa_info (+ attributes) message body."""
    info = xfrm_usersa_info.from_buffer_copy(body[: ctypes.sizeof(xfrm_usersa_info)])
    fam = info.family
    out = {
        "family": 6 if fam == socket.AF_INET6 else 4,
        "dst": _addr_text(info.id.daddr, fam),
        "src": _addr_text(info.saddr, fam),
        "spi": struct.unpack(">I", bytes(info.id.spi))[0],
        "proto": info.id.proto,
        "reqid": info.reqid,
        "bytes": info.curlft.bytes,
        "packets": info.curlft.packets,
        "soft_packet_limit": info.lft.soft_packet_limit,
        "hard_packet_limit": info.lft.hard_packet_limit,
        "replay": info.stats.replay,
        "integrity_failed": info.stats.integrity_failed,
        "if_id": None,
        "mark": None,
    }
    for atype, payload in iter_attrs(body[_align4(ctypes.sizeof(xfrm_usersa_info)) :]):
        if atype == XFRMA_IF_ID and len(payload) >= 4:
            out["if_id"] = struct.unpack("=I", payload[:4])[0]
        elif atype == XFRMA_MARK and len(payload) >= 8:
            out["mark"] = struct.unpack("=I", payload[:4])[0]
    return out


def parse_userpolicy(body: bytes) -> dict:
    """Summary of an xfrm_userpolicy_info (+ attributes): what cleanup needs to find ours."""
    n = ctypes.sizeof(xfrm_userpolicy_info)
    pol = xfrm_userpolicy_info.from_buffer_copy(body[:n].ljust(n, b"\0"))
    out = {"index": pol.index, "dir": pol.dir, "family": 6 if pol.sel.family == socket.AF_INET6 else 4,
           "if_id": None, "mark": None, "mark_mask": None, "reqids": []}
    for atype, payload in iter_attrs(body[_align4(n):]):
        if atype == XFRMA_IF_ID and len(payload) >= 4:
            out["if_id"] = struct.unpack("=I", payload[:4])[0]
        elif atype == XFRMA_MARK and len(payload) >= 8:
            out["mark"], out["mark_mask"] = struct.unpack("=II", payload[:8])
        elif atype == XFRMA_TMPL:
            t = ctypes.sizeof(xfrm_user_tmpl)
            for off in range(0, len(payload) - t + 1, t):
                out["reqids"].append(xfrm_user_tmpl.from_buffer_copy(payload[off:off + t]).reqid)
    return out


def policy_is_ours(p: dict) -> bool:
    return is_ours(p["if_id"]) or is_ours(p["mark"]) or any(is_ours(r) for r in p["reqids"])


def parse_expire(body: bytes) -> tuple[dict, bool]:
    n = ctypes.sizeof(xfrm_user_expire)
    exp = xfrm_user_expire.from_buffer_copy(body[:n].ljust(n, b"\0"))
    return parse_usersa(bytes(exp.state)), bool(exp.hard)


class XfrmError(OSError):
    pass


class XfrmSocket:
    """Blocking request/ack NETLINK_XFRM socket (XFRM operations are quick)."""

    def __init__(self, groups: int = 0) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_XFRM)
        self.sock.bind((0, groups))
        self._seq = int.from_bytes(os.urandom(2), "big")

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def _restamp(self, msg: bytes) -> tuple[bytes, int]:
        seq = self._next_seq()
        return msg[:8] + struct.pack("=I", seq) + msg[12:], seq

    def request(self, msg: bytes) -> None:
        """Send ``msg`` (with NLM_F_ACK) and raise :class:`XfrmError` on a negative ack."""
        msg, seq = self._restamp(msg)
        self.sock.send(msg)
        while True:
            data = self.sock.recv(65536)
            for mtype, _flags, mseq, body in iter_messages(data):
                if mseq != seq:
                    continue
                if mtype == NLMSG_ERROR:
                    err = struct.unpack_from("=i", body)[0]
                    if err:
                        raise XfrmError(-err, os.strerror(-err))
                    return

    def query(self, msg: bytes) -> list[tuple[int, bytes]]:
        """Send a GET (dump or single) request; returns [(type, body)]."""
        msg, seq = self._restamp(msg)
        self.sock.send(msg)
        out = []
        while True:
            data = self.sock.recv(1 << 20)
            for mtype, flags, mseq, body in iter_messages(data):
                if mseq != seq:
                    continue
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    err = struct.unpack_from("=i", body)[0]
                    if err:
                        raise XfrmError(-err, os.strerror(-err))
                    return out
                out.append((mtype, body))
                if not flags & 0x2:  # NLM_F_MULTI not set: single answer
                    return out
