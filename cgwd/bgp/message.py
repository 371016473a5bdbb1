"""BGP-4 message codec (RFC 4271, 4760, 6793, 2918, 4724, 1997, 7606).

Pure functions and small value classes; no I/O.

Decoding errors that the RFCs answer with a NOTIFICATION raise :class:`BgpError`
(code, subcode, data).  UPDATE errors that RFC 7606 answers with "treat-as-withdraw" or
"attribute discard" do not raise: :func:`decode_update` reports them in the returned
:class:`UpdateResult` (``treat_as_withdraw`` / ``errors``).
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import FrozenInstanceError, dataclass, field
from operator import attrgetter
from typing import NamedTuple

from ..routing.source import LearnedPath

MARKER = b"\xff" * 16
HEADER_LEN = 19
MAX_MESSAGE_LEN = 4096

OPEN, UPDATE, NOTIFICATION, KEEPALIVE, ROUTE_REFRESH = 1, 2, 3, 4, 5
MESSAGE_NAMES = {OPEN: "open", UPDATE: "update", NOTIFICATION: "notification",
                 KEEPALIVE: "keepalive", ROUTE_REFRESH: "route_refresh"}

AS_TRANS = 23456
AFI_IPV4, AFI_IPV6 = 1, 2
SAFI_UNICAST = 1

# capability codes
CAP_MP = 1
CAP_ROUTE_REFRESH = 2
CAP_EXTENDED_MESSAGE = 6
CAP_GRACEFUL_RESTART = 64
CAP_AS4 = 65
CAP_ADD_PATH = 69
CAP_ENHANCED_RR = 70
CAP_ROUTE_REFRESH_OLD = 128

# attribute type codes
ATTR_ORIGIN = 1
ATTR_AS_PATH = 2
ATTR_NEXT_HOP = 3
ATTR_MED = 4
ATTR_LOCAL_PREF = 5
ATTR_ATOMIC_AGGREGATE = 6
ATTR_AGGREGATOR = 7
ATTR_COMMUNITIES = 8
ATTR_ORIGINATOR_ID = 9
ATTR_CLUSTER_LIST = 10
ATTR_MP_REACH = 14
ATTR_MP_UNREACH = 15
ATTR_EXT_COMMUNITIES = 16
ATTR_AS4_PATH = 17
ATTR_AS4_AGGREGATOR = 18
ATTR_LARGE_COMMUNITIES = 32

FLAG_OPTIONAL = 0x80
FLAG_TRANSITIVE = 0x40
FLAG_PARTIAL = 0x20
FLAG_EXTENDED = 0x10

ORIGIN_IGP, ORIGIN_EGP, ORIGIN_INCOMPLETE = 0, 1, 2
AS_SET, AS_SEQUENCE, AS_CONFED_SEQUENCE, AS_CONFED_SET = 1, 2, 3, 4

# (optional, transitive) expected for the attributes we know
_KNOWN_FLAGS = {
    ATTR_ORIGIN: (0, 1), ATTR_AS_PATH: (0, 1), ATTR_NEXT_HOP: (0, 1),
    ATTR_MED: (1, 0), ATTR_LOCAL_PREF: (0, 1), ATTR_ATOMIC_AGGREGATE: (0, 1),
    ATTR_AGGREGATOR: (1, 1), ATTR_COMMUNITIES: (1, 1), ATTR_ORIGINATOR_ID: (1, 0),
    ATTR_CLUSTER_LIST: (1, 0), ATTR_MP_REACH: (1, 0), ATTR_MP_UNREACH: (1, 0),
    ATTR_EXT_COMMUNITIES: (1, 1), ATTR_AS4_PATH: (1, 1), ATTR_AS4_AGGREGATOR: (1, 1),
    ATTR_LARGE_COMMUNITIES: (1, 1),
}
WELL_KNOWN = {ATTR_ORIGIN, ATTR_AS_PATH, ATTR_NEXT_HOP, ATTR_LOCAL_PREF, ATTR_ATOMIC_AGGREGATE}

# ---------------------------------------------------------------- error names
ERROR_NAMES = {
    1: ("Message Header Error", {1: "Connection Not Synchronized", 2: "Bad Message Length",
                                 3: "Bad Message Type"}),
    2: ("OPEN Message Error", {1: "Unsupported Version Number", 2: "Bad Peer AS",
                               3: "Bad BGP Identifier", 4: "Unsupported Optional Parameter",
                               6: "Unacceptable Hold Time", 7: "Unsupported Capability",
                               11: "Role Mismatch"}),
    3: ("UPDATE Message Error", {1: "Malformed Attribute List",
                                 2: "Unrecognized Well-known Attribute",
                                 3: "Missing Well-known Attribute", 4: "Attribute Flags Error",
                                 5: "Attribute Length Error", 6: "Invalid ORIGIN Attribute",
                                 8: "Invalid NEXT_HOP Attribute", 9: "Optional Attribute Error",
                                 10: "Invalid Network Field", 11: "Malformed AS_PATH"}),
    4: ("Hold Timer Expired", {}),
    5: ("Finite State Machine Error", {1: "Unexpected message in OpenSent",
                                       2: "Unexpected message in OpenConfirm",
                                       3: "Unexpected message in Established"}),
    6: ("Cease", {1: "Maximum Number of Prefixes Reached", 2: "Administrative Shutdown",
                  3: "Peer De-configured", 4: "Administrative Reset", 5: "Connection Rejected",
                  6: "Other Configuration Change", 7: "Connection Collision Resolution",
                  8: "Out of Resources", 9: "Hard Reset", 10: "BFD Down"}),
    7: ("ROUTE-REFRESH Message Error", {1: "Invalid Message Length"}),
}


def notification_text(code: int, subcode: int, data: bytes = b"") -> str:
    """Human-readable text of a NOTIFICATION ("Cease / Administrative Shutdown: ...")."""
    name, subs = ERROR_NAMES.get(code, (f"error code {code}", {}))
    text = name
    if subcode or subs:
        text += " / " + subs.get(subcode, f"subcode {subcode}")
    if code == 6 and subcode in (2, 4) and data:
        # RFC 8203 shutdown communication
        n = data[0]
        msg = data[1:1 + n].decode("utf-8", "replace")
        if msg:
            text += f": {msg}"
    return text


class BgpError(Exception):
    """An error the RFCs answer with a NOTIFICATION (code, subcode, data)."""

    def __init__(self, code: int, subcode: int, data: bytes = b"", reason: str = ""):
        self.code, self.subcode, self.data = code, subcode, bytes(data)
        self.reason = reason or notification_text(code, subcode)
        super().__init__(f"{notification_text(code, subcode)} ({self.reason})")


# ------------------------------------------------------------------- value types
class PathAttributes(NamedTuple):
    """The path attributes a route carries (every field of :class:`Route` but the prefix).

    One immutable object is shared by every prefix of one UPDATE (and interned across
    UPDATEs: :func:`intern_attributes`), so a route costs a prefix string and two pointers.
    """
    next_hop: str | None = None
    as_path: tuple = ()
    origin: int = ORIGIN_IGP
    med: int | None = None
    local_pref: int | None = None
    communities: tuple = ()
    atomic_aggregate: bool = False
    aggregator: tuple | None = None


_FIELDS = ("prefix",) + PathAttributes._fields
_INTERNED: dict = {}
_INTERN_MAX = 4096


def intern_attributes(attrs: PathAttributes) -> PathAttributes:
    """The one shared object equal to ``attrs`` (a bounded memo: values are immutable)."""
    got = _INTERNED.get(attrs)
    if got is None:
        if len(_INTERNED) >= _INTERN_MAX:
            _INTERNED.clear()
        got = _INTERNED[attrs] = attrs
    return got


class Route:
    """One prefix with its path attributes.

    ``as_path`` is a tuple of segments ``((segment_type, (asn, ...)), ...)``.
    Immutable, compared and hashed by value (every field), as a frozen dataclass of the
    fields ``prefix, next_hop, as_path, origin, med, local_pref, communities,
    atomic_aggregate, aggregator``; the attributes live in one shared
    :class:`PathAttributes` (``attrs``).
    """
    __slots__ = ("prefix", "attrs")
    __match_args__ = _FIELDS

    def __init__(self, prefix: str, next_hop: str | None = None, as_path: tuple = (),
                 origin: int = ORIGIN_IGP, med: int | None = None, local_pref: int | None = None,
                 communities: tuple = (), atomic_aggregate: bool = False,
                 aggregator: tuple | None = None):
        _set_prefix(self, prefix)
        _set_attrs(self, PathAttributes(next_hop, as_path, origin, med, local_pref, communities,
                                        atomic_aggregate, aggregator))

    next_hop = property(attrgetter("attrs.next_hop"))
    as_path = property(attrgetter("attrs.as_path"))
    origin = property(attrgetter("attrs.origin"))
    med = property(attrgetter("attrs.med"))
    local_pref = property(attrgetter("attrs.local_pref"))
    communities = property(attrgetter("attrs.communities"))
    atomic_aggregate = property(attrgetter("attrs.atomic_aggregate"))
    aggregator = property(attrgetter("attrs.aggregator"))

    def __setattr__(self, name, value):
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name):
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self.prefix == other.prefix and (self.attrs is other.attrs or self.attrs == other.attrs)

    def __hash__(self):
        return hash((self.prefix, self.attrs))

    def __repr__(self):
        return "Route(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in _FIELDS) + ")"

    def __reduce__(self):
        return (_route, (self.prefix, self.attrs))

    def as_path_length(self) -> int:
        return as_path_length(self.as_path)

    def as_path_list(self) -> list[int]:
        out: list[int] = []
        for _t, asns in self.as_path:
            out.extend(asns)
        return out

    def as_path_str(self) -> str:
        return as_path_str(self.as_path)

    def attr_key(self) -> tuple:
        """(next_hop, as_path, origin, med, local_pref, communities, atomic_aggregate,
        aggregator): the PathAttributes (a tuple)."""
        return self.attrs

    # the routing layer's OfferedRoute (cgwd.routing.source)
    def preference(self) -> tuple:
        """AWS's tunnel choice: shortest AS_PATH (AS_SET counts 1), then lowest MED
        (compared always, missing = 0)."""
        a = self.attrs
        return (as_path_length(a.as_path), a.med or 0)

    def learned_path(self) -> LearnedPath:
        a = self.attrs
        return LearnedPath(a.as_path, a.origin, a.atomic_aggregate, a.aggregator)

    def describe(self) -> dict:
        return {"source": "bgp", "bgp_next_hop": self.next_hop, "as_path": self.as_path_list(),
                "as_path_str": self.as_path_str(), "med": self.med}


_set_prefix = Route.__dict__["prefix"].__set__
_set_attrs = Route.__dict__["attrs"].__set__
_new_object = object.__new__


def _route(prefix: str, attrs: PathAttributes) -> Route:
    """A Route of ``prefix`` sharing ``attrs`` (no copy, no check: the decoder's constructor)."""
    r = _new_object(Route)
    _set_prefix(r, prefix)
    _set_attrs(r, attrs)
    return r


def routes_sharing(prefixes, attrs: PathAttributes) -> list[Route]:
    """Routes of ``prefixes`` that all share the one ``attrs`` object."""
    out = []
    append = out.append
    for p in prefixes:
        r = _new_object(Route)
        _set_prefix(r, p)
        _set_attrs(r, attrs)
        append(r)
    return out


def as_path_length(path) -> int:
    n = 0
    for t, asns in path:
        if t == AS_SEQUENCE:
            n += len(asns)
        elif t == AS_SET:
            n += 1
    return n


def as_path_str(path) -> str:
    parts = []
    for t, asns in path:
        if t == AS_SEQUENCE:
            parts.extend(str(a) for a in asns)
        elif t == AS_SET:
            parts.append("{" + ",".join(str(a) for a in asns) + "}")
        else:
            parts.append("(" + " ".join(str(a) for a in asns) + ")")
    return " ".join(parts)


def seq(*asns: int) -> tuple:
    """AS_PATH made of one AS_SEQUENCE (helper)."""
    return ((AS_SEQUENCE, tuple(asns)),) if asns else ()


@dataclass
class Capability:
    code: int
    value: bytes = b""


@dataclass
class Open:
    version: int
    asn: int                      # the 2-octet "My Autonomous System" field
    hold_time: int
    router_id: str
    capabilities: list = field(default_factory=list)   # list[Capability]

    # parsed views -------------------------------------------------------
    def cap(self, code: int) -> list[Capability]:
        return [c for c in self.capabilities if c.code == code]

    def as4(self) -> int | None:
        for c in self.cap(CAP_AS4):
            if len(c.value) == 4:
                return struct.unpack("!I", c.value)[0]
        return None

    def peer_asn(self) -> int:
        a = self.as4()
        return a if a is not None else self.asn

    def multiprotocol(self) -> set:
        out = set()
        for c in self.cap(CAP_MP):
            if len(c.value) == 4:
                afi, _r, safi = struct.unpack("!HBB", c.value)
                out.add((afi, safi))
        return out

    def route_refresh(self) -> bool:
        return bool(self.cap(CAP_ROUTE_REFRESH) or self.cap(CAP_ROUTE_REFRESH_OLD))

    def graceful_restart(self) -> dict | None:
        """{'restart_time': s, 'restarting': bool, 'afis': {(afi, safi): forwarding}}"""
        for c in self.cap(CAP_GRACEFUL_RESTART):
            v = c.value
            if len(v) < 2:
                return None
            hdr = struct.unpack("!H", v[:2])[0]
            afis = {}
            for i in range(2, len(v) - 3, 4):
                afi, safi, fl = struct.unpack("!HBB", v[i:i + 4])
                afis[(afi, safi)] = bool(fl & 0x80)
            return {"restart_time": hdr & 0x0FFF, "restarting": bool(hdr & 0x8000),
                    "afis": afis}
        return None


@dataclass
class Notification:
    code: int
    subcode: int
    data: bytes = b""

    def text(self) -> str:
        return notification_text(self.code, self.subcode, self.data)


@dataclass
class Keepalive:
    pass


@dataclass
class RouteRefresh:
    afi: int
    safi: int
    subtype: int = 0


@dataclass
class UpdateResult:
    """A decoded UPDATE.

    ``announced``: routes to install (empty when treat-as-withdraw applied);
    ``withdrawn``: prefixes to remove (includes the announced ones on treat-as-withdraw);
    ``eor``: (afi, safi) when the message is an End-of-RIB marker;
    ``errors``: RFC 7606 handling that happened, in words.
    """
    announced: list = field(default_factory=list)
    withdrawn: list = field(default_factory=list)
    eor: tuple | None = None
    treat_as_withdraw: bool = False
    errors: list = field(default_factory=list)
    link_local: str | None = None   # RFC 2545: the link-local half of a 32-octet IPv6 next hop


# ------------------------------------------------------------------- framing
def frame(msg_type: int, body: bytes = b"") -> bytes:
    return MARKER + struct.pack("!HB", HEADER_LEN + len(body), msg_type) + body


def check_header(buf, off: int = 0) -> tuple[int, int] | None:
    """Validate the header at ``buf[off:]``; return (length, type), None if incomplete.

    Raises BgpError per RFC 4271 6.1.
    """
    if len(buf) - off < HEADER_LEN:
        return None
    if buf[off:off + 16] != MARKER:
        raise BgpError(1, 1, reason="bad marker")
    length, mtype = struct.unpack_from("!HB", buf, off + 16)
    bad_len = (length < HEADER_LEN or length > MAX_MESSAGE_LEN
               or (mtype == OPEN and length < 29)
               or (mtype == UPDATE and length < 23)
               or (mtype == KEEPALIVE and length != 19)
               or (mtype == NOTIFICATION and length < 21)
               or (mtype == ROUTE_REFRESH and length < 23))
    if bad_len:
        if mtype == ROUTE_REFRESH and length >= HEADER_LEN and length <= MAX_MESSAGE_LEN:
            # RFC 7313: ROUTE-REFRESH of wrong length -> code 7 subcode 1, whole message
            if len(buf) - off < length:
                return None
            raise BgpError(7, 1, bytes(buf[off:off + length]),
                           reason=f"ROUTE-REFRESH length {length}")
        raise BgpError(1, 2, struct.pack("!H", length), reason=f"bad length {length}")
    if mtype not in MESSAGE_NAMES:
        raise BgpError(1, 3, bytes([mtype]), reason=f"unknown message type {mtype}")
    return length, mtype


# ------------------------------------------------------------------- OPEN
def encode_open(asn: int, hold_time: int, router_id: str, capabilities: list) -> bytes:
    # one capability per optional parameter (RFC 5492 allows either; the widest parsed form)
    params = b""
    for c in capabilities:
        cap = struct.pack("!BB", c.code, len(c.value)) + c.value
        params += struct.pack("!BB", 2, len(cap)) + cap
    my_as = asn if asn <= 0xFFFF else AS_TRANS
    body = struct.pack("!BHH4sB", 4, my_as, hold_time,
                       ipaddress.IPv4Address(router_id).packed, len(params)) + params
    return frame(OPEN, body)


def decode_open(body: bytes) -> Open:
    if len(body) < 10:
        raise BgpError(1, 2, struct.pack("!H", len(body) + HEADER_LEN))
    version, my_as, hold, rid, plen = struct.unpack_from("!BHH4sB", body)
    if version != 4:
        raise BgpError(2, 1, struct.pack("!H", 4), reason=f"version {version}")
    if 10 + plen != len(body):
        raise BgpError(2, 0, reason="optional parameters length mismatch")
    caps = []
    i, end = 10, 10 + plen
    while i < end:
        if i + 2 > end:
            raise BgpError(2, 0, reason="truncated optional parameter")
        ptype, pl = body[i], body[i + 1]
        if i + 2 + pl > end:
            raise BgpError(2, 0, reason="optional parameter overruns")
        pval = body[i + 2:i + 2 + pl]
        if ptype != 2:
            raise BgpError(2, 4, reason=f"optional parameter type {ptype}")
        j = 0
        while j < pl:
            if j + 2 > pl:
                raise BgpError(2, 0, reason="truncated capability")
            cc, cl = pval[j], pval[j + 1]
            if j + 2 + cl > pl:
                raise BgpError(2, 0, reason="capability overruns")
            caps.append(Capability(cc, bytes(pval[j + 2:j + 2 + cl])))
            j += 2 + cl
        i += 2 + pl
    return Open(version, my_as, hold, str(ipaddress.IPv4Address(rid)), caps)


def cap_mp(afi: int, safi: int = SAFI_UNICAST) -> Capability:
    return Capability(CAP_MP, struct.pack("!HBB", afi, 0, safi))


def cap_as4(asn: int) -> Capability:
    return Capability(CAP_AS4, struct.pack("!I", asn))


def cap_route_refresh() -> Capability:
    return Capability(CAP_ROUTE_REFRESH)


def cap_graceful_restart(restart_time: int, afis=(), restarting: bool = False) -> Capability:
    v = struct.pack("!H", (0x8000 if restarting else 0) | (restart_time & 0x0FFF))
    for afi, safi, fwd in afis:
        v += struct.pack("!HBB", afi, safi, 0x80 if fwd else 0)
    return Capability(CAP_GRACEFUL_RESTART, v)


# ------------------------------------------------------------- other messages
def encode_keepalive() -> bytes:
    return frame(KEEPALIVE)


def encode_notification(code: int, subcode: int, data: bytes = b"") -> bytes:
    data = bytes(data)[:MAX_MESSAGE_LEN - 21]
    return frame(NOTIFICATION, bytes([code, subcode]) + data)


def decode_notification(body: bytes) -> Notification:
    return Notification(body[0], body[1], bytes(body[2:]))


def encode_route_refresh(afi: int = AFI_IPV4, safi: int = SAFI_UNICAST, subtype: int = 0) -> bytes:
    return frame(ROUTE_REFRESH, struct.pack("!HBB", afi, subtype, safi))


def decode_route_refresh(body: bytes) -> RouteRefresh:
    if len(body) != 4:
        raise BgpError(7, 1, frame(ROUTE_REFRESH, body))
    afi, sub, safi = struct.unpack("!HBB", body)
    return RouteRefresh(afi, safi, sub)


def shutdown_data(reason: str) -> bytes:
    """RFC 8203 shutdown communication (length + UTF-8, at most 128 octets)."""
    raw = reason.encode("utf-8")[:128]
    while raw:
        try:
            raw.decode("utf-8")
            break
        except UnicodeDecodeError:
            raw = raw[:-1]
    return bytes([len(raw)]) + raw if raw else b""


# ------------------------------------------------------------------- prefixes
def _prefix_to_bytes(prefix: str) -> tuple[int, bytes]:
    net = ipaddress.ip_network(prefix, strict=False)
    plen = net.prefixlen
    return net.version, bytes([plen]) + net.network_address.packed[:(plen + 7) >> 3]


def encode_prefix(prefix: str) -> bytes:
    return _prefix_to_bytes(prefix)[1]


_MASK = [0xFF, 0x80, 0xC0, 0xE0, 0xF0, 0xF8, 0xFC, 0xFE]
_OCTET = tuple(str(i) for i in range(256))
_PLEN_SUFFIX = tuple(f"/{i}" for i in range(33))


def decode_prefixes(data, afi: int = AFI_IPV4) -> list[str]:
    """NLRI field -> list of canonical prefix strings.  ValueError when malformed."""
    out = []
    i, n = 0, len(data)
    if afi == AFI_IPV4:
        # unrolled by octet count; octets and "/len" from tables (the canonical strings the
        # generic form f"{a}.{b}.{c}.{d}/{plen}" gives, host bits masked)
        o, sfx, mask = _OCTET, _PLEN_SUFFIX, _MASK
        append = out.append
        while i < n:
            plen = data[i]
            if plen > 24:
                if plen > 32:
                    raise ValueError(f"prefix length {plen}")
                if i + 5 > n:
                    raise ValueError("truncated prefix")
                d = data[i + 4] if plen == 32 else data[i + 4] & mask[plen & 7]
                append(f"{o[data[i + 1]]}.{o[data[i + 2]]}.{o[data[i + 3]]}.{o[d]}{sfx[plen]}")
                i += 5
            elif plen > 16:
                if i + 4 > n:
                    raise ValueError("truncated prefix")
                c = data[i + 3] if plen == 24 else data[i + 3] & mask[plen & 7]
                append(f"{o[data[i + 1]]}.{o[data[i + 2]]}.{o[c]}.0{sfx[plen]}")
                i += 4
            elif plen > 8:
                if i + 3 > n:
                    raise ValueError("truncated prefix")
                b = data[i + 2] if plen == 16 else data[i + 2] & mask[plen & 7]
                append(f"{o[data[i + 1]]}.{o[b]}.0.0{sfx[plen]}")
                i += 3
            elif plen:
                if i + 2 > n:
                    raise ValueError("truncated prefix")
                a = data[i + 1] if plen == 8 else data[i + 1] & mask[plen & 7]
                append(f"{o[a]}.0.0.0{sfx[plen]}")
                i += 2
            else:
                append("0.0.0.0/0")
                i += 1
    elif afi == AFI_IPV6:
        while i < n:
            plen = data[i]
            i += 1
            if plen > 128:
                raise ValueError(f"prefix length {plen}")
            nb = (plen + 7) >> 3
            if i + nb > n:
                raise ValueError("truncated prefix")
            raw = int.from_bytes(bytes(data[i:i + nb]) + bytes(16 - nb), "big")
            raw &= ((1 << 128) - 1) ^ ((1 << (128 - plen)) - 1)
            out.append(str(ipaddress.IPv6Network((raw, plen))))
            i += nb
    else:
        raise ValueError(f"afi {afi}")
    return out


# ------------------------------------------------------------------- AS paths
def encode_as_path(path, as4: bool) -> bytes:
    out = bytearray()
    fmt = "!I" if as4 else "!H"
    for t, asns in path:
        asns = list(asns)
        while True:   # segments hold at most 255 ASes
            chunk, asns = asns[:255], asns[255:]
            out += bytes([t, len(chunk)])
            for a in chunk:
                out += struct.pack(fmt, a if as4 or a <= 0xFFFF else AS_TRANS)
            if not asns:
                break
    return bytes(out)


def decode_as_path(data, as4: bool) -> tuple:
    """AS_PATH value -> segments; ValueError when malformed (RFC 7606 7.2)."""
    size = 4 if as4 else 2
    segs = []
    i, n = 0, len(data)
    while i < n:
        if i + 2 > n:
            raise ValueError("truncated segment header")
        t, cnt = data[i], data[i + 1]
        if t not in (AS_SET, AS_SEQUENCE, AS_CONFED_SEQUENCE, AS_CONFED_SET):
            raise ValueError(f"segment type {t}")
        if cnt == 0:
            raise ValueError("empty segment")
        end = i + 2 + cnt * size
        if end > n:
            raise ValueError("segment overruns attribute")
        if as4:
            asns = struct.unpack_from(f"!{cnt}I", data, i + 2)
        else:
            asns = struct.unpack_from(f"!{cnt}H", data, i + 2)
        segs.append((t, tuple(asns)))
        i = end
    return tuple(segs)


def _count(path) -> int:
    return as_path_length(path)


def merge_as4_path(as_path, as4_path) -> tuple:
    """RFC 6793 4.2.3: rebuild the path from AS_PATH (2-octet) and AS4_PATH."""
    n2, n4 = _count(as_path), _count(as4_path)
    if n2 < n4:
        return as_path
    keep = n2 - n4
    out = []
    for t, asns in as_path:
        if keep <= 0:
            break
        if t == AS_SEQUENCE:
            take = asns[:keep]
            out.append((t, tuple(take)))
            keep -= len(take)
        elif t == AS_SET:
            out.append((t, asns))
            keep -= 1
        else:
            out.append((t, asns))
    out.extend(as4_path)
    # merge adjacent sequences
    merged = []
    for t, asns in out:
        if merged and t == AS_SEQUENCE and merged[-1][0] == AS_SEQUENCE \
                and len(merged[-1][1]) + len(asns) <= 255:
            merged[-1] = (t, merged[-1][1] + tuple(asns))
        else:
            merged.append((t, tuple(asns)))
    return tuple(merged)


def _needs_as4_path(path) -> bool:
    return any(a > 0xFFFF for _t, asns in path for a in asns)


# ------------------------------------------------------------------- attributes
def _attr(flags: int, code: int, value: bytes) -> bytes:
    if len(value) > 255:
        return struct.pack("!BBH", flags | FLAG_EXTENDED, code, len(value)) + value
    return struct.pack("!BBB", flags, code, len(value)) + value


def encode_attributes(r: Route, as4: bool, *, mp_reach: bytes | None = None,
                      ibgp: bool = False) -> bytes:
    """Path attributes of ``r`` (without MP_REACH unless given)."""
    out = bytearray()
    wk = FLAG_TRANSITIVE
    out += _attr(wk, ATTR_ORIGIN, bytes([r.origin]))
    out += _attr(wk, ATTR_AS_PATH, encode_as_path(r.as_path, as4))
    if mp_reach is not None:
        out = bytearray(_attr(FLAG_OPTIONAL, ATTR_MP_REACH, mp_reach)) + out
    elif r.next_hop is not None:
        out += _attr(wk, ATTR_NEXT_HOP, ipaddress.IPv4Address(r.next_hop).packed)
    if r.med is not None:
        out += _attr(FLAG_OPTIONAL, ATTR_MED, struct.pack("!I", r.med))
    if ibgp and r.local_pref is not None:
        out += _attr(wk, ATTR_LOCAL_PREF, struct.pack("!I", r.local_pref))
    if r.atomic_aggregate:
        out += _attr(wk, ATTR_ATOMIC_AGGREGATE, b"")
    if r.aggregator is not None:
        agg_as, agg_ip = r.aggregator
        ip = ipaddress.IPv4Address(agg_ip).packed
        if as4:
            out += _attr(FLAG_OPTIONAL | FLAG_TRANSITIVE, ATTR_AGGREGATOR, struct.pack("!I", agg_as) + ip)
        else:
            out += _attr(FLAG_OPTIONAL | FLAG_TRANSITIVE, ATTR_AGGREGATOR,
                         struct.pack("!H", agg_as if agg_as <= 0xFFFF else AS_TRANS) + ip)
            if agg_as > 0xFFFF:
                out += _attr(FLAG_OPTIONAL | FLAG_TRANSITIVE, ATTR_AS4_AGGREGATOR,
                             struct.pack("!I", agg_as) + ip)
    if r.communities:
        out += _attr(FLAG_OPTIONAL | FLAG_TRANSITIVE, ATTR_COMMUNITIES,
                     b"".join(struct.pack("!I", c) for c in r.communities))
    if not as4 and _needs_as4_path(r.as_path):
        out += _attr(FLAG_OPTIONAL | FLAG_TRANSITIVE, ATTR_AS4_PATH, encode_as_path(r.as_path, True))
    return bytes(out)


def _mp_next_hop(afi: int, next_hop: str | None) -> bytes:
    if afi == AFI_IPV6:
        addr = ipaddress.ip_address(next_hop or "::")
        if addr.version == 4:
            addr = ipaddress.IPv6Address("::ffff:" + str(addr))
        return addr.packed
    return ipaddress.IPv4Address(next_hop or "0.0.0.0").packed


# ------------------------------------------------------------------- UPDATE encode
def encode_update(withdrawn=(), routes=(), as4: bool = True, ibgp: bool = False,
                  link_local: str | None = None) -> list[bytes]:
    """Pack withdrawals and routes into as few UPDATE messages as fit (<= 4096 octets).

    Routes with identical attributes share messages. IPv6 goes in MP_REACH/MP_UNREACH (the
    very first attribute, RFC 7606 5.1) with the route's global next hop, followed by
    ``link_local`` when given (a 32-octet next hop, RFC 2545 3).
    """
    msgs: list[bytes] = []
    budget = MAX_MESSAGE_LEN - HEADER_LEN - 4
    v4_wd, v6_wd = [], []
    for p in withdrawn:
        ver, raw = _prefix_to_bytes(p)
        (v4_wd if ver == 4 else v6_wd).append(raw)
    # IPv4 withdrawals
    cur = bytearray()
    for raw in v4_wd:
        if len(cur) + len(raw) > budget:
            msgs.append(_update_body(bytes(cur), b"", b""))
            cur = bytearray()
        cur += raw
    if cur:
        msgs.append(_update_body(bytes(cur), b"", b""))
    # IPv6 withdrawals in MP_UNREACH
    cur = bytearray()
    limit6 = budget - 4 - 3
    for raw in v6_wd:
        if len(cur) + len(raw) > limit6:
            msgs.append(_update_body(b"", _attr(FLAG_OPTIONAL, ATTR_MP_UNREACH,
                                                struct.pack("!HB", AFI_IPV6, 1) + bytes(cur)), b""))
            cur = bytearray()
        cur += raw
    if cur:
        msgs.append(_update_body(b"", _attr(FLAG_OPTIONAL, ATTR_MP_UNREACH,
                                            struct.pack("!HB", AFI_IPV6, 1) + bytes(cur)), b""))
    # announcements grouped by attributes
    groups: dict = {}
    for r in routes:
        ver, raw = _prefix_to_bytes(r.prefix)
        groups.setdefault((ver, r.attr_key()), (r, []))[1].append(raw)
    for (ver, _k), (r, raws) in groups.items():
        if ver == 4:
            attrs = encode_attributes(r, as4, ibgp=ibgp)
            room = budget - len(attrs)
            cur = bytearray()
            for raw in raws:
                if len(cur) + len(raw) > room:
                    msgs.append(_update_body(b"", attrs, bytes(cur)))
                    cur = bytearray()
                cur += raw
            if cur:
                msgs.append(_update_body(b"", attrs, bytes(cur)))
        else:
            nh = _mp_next_hop(AFI_IPV6, r.next_hop)
            if link_local:
                nh += ipaddress.IPv6Address(link_local).packed
            hdr = struct.pack("!HBB", AFI_IPV6, 1, len(nh)) + nh + b"\x00"
            base = encode_attributes(r, as4, mp_reach=hdr, ibgp=ibgp)
            room = budget - len(base) - 2  # may switch to extended length
            cur = bytearray()
            chunks = []
            for raw in raws:
                if len(cur) + len(raw) > room:
                    chunks.append(bytes(cur))
                    cur = bytearray()
                cur += raw
            if cur:
                chunks.append(bytes(cur))
            for ch in chunks:
                msgs.append(_update_body(b"", encode_attributes(r, as4, mp_reach=hdr + ch, ibgp=ibgp), b""))
    return [frame(UPDATE, m) for m in msgs]


def _update_body(withdrawn: bytes, attrs: bytes, nlri: bytes) -> bytes:
    return struct.pack("!H", len(withdrawn)) + withdrawn + struct.pack("!H", len(attrs)) + attrs + nlri


def encode_end_of_rib(afi: int = AFI_IPV4, safi: int = SAFI_UNICAST) -> bytes:
    if afi == AFI_IPV4 and safi == SAFI_UNICAST:
        return frame(UPDATE, b"\x00\x00\x00\x00")
    return frame(UPDATE, _update_body(b"", _attr(FLAG_OPTIONAL, ATTR_MP_UNREACH,
                                                 struct.pack("!HB", afi, safi)), b""))


# ------------------------------------------------------------------- UPDATE decode
def decode_update(body, *, as4: bool, ibgp: bool = False, mp_nlri: bool = False) -> UpdateResult:
    """Decode an UPDATE body with RFC 7606 revised error handling.

    Raises BgpError only where RFC 7606 requires a session reset. ``mp_nlri``: the session
    carries a family whose NLRI travel only in MP_REACH/MP_UNREACH (IPv6 unicast): an
    attribute list that breaks off before both were found leaves NLRI that cannot be
    located, so treat-as-withdraw is impossible and the session resets (RFC 7606 5.2, 3.j).
    """
    res = UpdateResult()
    n = len(body)
    if n < 4:
        raise BgpError(3, 1, reason="UPDATE too short")
    wlen = (body[0] << 8) | body[1]
    if 2 + wlen + 2 > n:
        raise BgpError(3, 1, reason="withdrawn routes length overruns message")
    try:
        withdrawn = decode_prefixes(body[2:2 + wlen], AFI_IPV4)
    except ValueError as e:
        raise BgpError(3, 10, reason=f"withdrawn routes: {e}") from None
    alen = (body[2 + wlen] << 8) | body[3 + wlen]
    astart = 4 + wlen
    aend = astart + alen
    if aend > n:
        raise BgpError(3, 1, reason="total path attribute length overruns message")
    try:
        nlri = decode_prefixes(body[aend:], AFI_IPV4)
    except ValueError as e:
        raise BgpError(3, 10, reason=f"NLRI: {e}") from None

    if alen == 0 and not withdrawn and not nlri:
        res.eor = (AFI_IPV4, SAFI_UNICAST)
        return res

    # parse attributes
    seen: set = set()
    taw = False               # treat-as-withdraw
    errors = res.errors
    origin = None
    as_path = None
    as4_path = None
    next_hop = None
    med = None
    local_pref = None
    communities = ()
    atomic = False
    aggregator = None
    as4_aggregator = None
    mp_reach = None           # (afi, safi, next_hop, [prefixes], link-local next hop)
    mp_unreach = None         # (afi, safi, [prefixes])
    other_attrs = False
    cut = False               # the attribute list broke off (RFC 7606 4): the rest unread
    nh_malformed = False
    i = astart
    while i < aend:
        if i + 3 > aend:
            errors.append("attribute header overruns attribute list")
            taw = cut = True
            break
        flags, code = body[i], body[i + 1]
        if flags & FLAG_EXTENDED:
            if i + 4 > aend:
                errors.append("attribute header overruns attribute list")
                taw = cut = True
                break
            alen_ = (body[i + 2] << 8) | body[i + 3]
            vstart = i + 4
        else:
            alen_ = body[i + 2]
            vstart = i + 3
        vend = vstart + alen_
        if vend > aend:
            errors.append(f"attribute {code} length overruns attribute list")
            taw = cut = True
            break
        val = body[vstart:vend]
        i = vend
        if code in (ATTR_MP_REACH, ATTR_MP_UNREACH):
            if code in seen:
                raise BgpError(3, 1, reason=f"attribute {code} appears twice")
        elif code in seen:
            errors.append(f"duplicate attribute {code} discarded")
            continue
        seen.add(code)
        if code != ATTR_MP_UNREACH:
            other_attrs = True
        expected = _KNOWN_FLAGS.get(code)
        if expected is None:
            if not flags & FLAG_OPTIONAL:
                # RFC 4271 6.3: unrecognized well-known attribute
                raise BgpError(3, 2, bytes(body[vstart - (4 if flags & FLAG_EXTENDED else 3):vend]),
                               reason=f"unrecognized well-known attribute {code}")
            continue   # unknown optional: ignore (we do not propagate)
        flags_ok = (bool(flags & FLAG_OPTIONAL), bool(flags & FLAG_TRANSITIVE)) == \
            (bool(expected[0]), bool(expected[1]))
        raw_attr = bytes(body[vstart - (4 if flags & FLAG_EXTENDED else 3):vend])
        if code == ATTR_MP_REACH or code == ATTR_MP_UNREACH:
            if not flags_ok:
                raise BgpError(3, 4, raw_attr, reason=f"attribute {code} flags")
            try:
                if code == ATTR_MP_REACH:
                    mp_reach = _decode_mp_reach(val)
                else:
                    mp_unreach = _decode_mp_unreach(val)
            except ValueError as e:
                # RFC 7606 7.11 / RFC 4760: session reset (AFI/SAFI disable not implemented)
                raise BgpError(3, 9, raw_attr, reason=f"MP attribute: {e}") from None
            continue
        if not flags_ok:
            # RFC 7606 3.c: flags conflict -> malformed -> attribute's own rule
            errors.append(f"attribute {code} flags 0x{flags:02x} wrong")
            if code in (ATTR_ATOMIC_AGGREGATE, ATTR_AGGREGATOR, ATTR_AS4_PATH, ATTR_AS4_AGGREGATOR,
                        ATTR_EXT_COMMUNITIES, ATTR_LARGE_COMMUNITIES):
                continue    # attribute discard
            if code == ATTR_LOCAL_PREF and not ibgp:
                continue
            if code in (ATTR_ORIGINATOR_ID, ATTR_CLUSTER_LIST) and not ibgp:
                continue
            taw = True
            continue
        if code == ATTR_ORIGIN:
            if len(val) != 1 or val[0] > 2:
                errors.append("malformed ORIGIN")
                taw = True
            else:
                origin = val[0]
        elif code == ATTR_AS_PATH:
            try:
                as_path = decode_as_path(val, as4)
            except ValueError as e:
                errors.append(f"malformed AS_PATH: {e}")
                taw = True
        elif code == ATTR_NEXT_HOP:
            if len(val) != 4:
                nh_malformed = True     # treat-as-withdraw if IPv4 NLRI need it (below)
            else:
                next_hop = f"{val[0]}.{val[1]}.{val[2]}.{val[3]}"
        elif code == ATTR_MED:
            if len(val) != 4:
                errors.append("malformed MULTI_EXIT_DISC")
                taw = True
            else:
                med = struct.unpack("!I", val)[0]
        elif code == ATTR_LOCAL_PREF:
            if not ibgp:
                # RFC 4271 5.1.5 / 7606 7.5: ignored (discarded) from an external peer
                if len(val) != 4:
                    errors.append("malformed LOCAL_PREF from external peer discarded")
                continue
            if len(val) != 4:
                errors.append("malformed LOCAL_PREF")
                taw = True
            else:
                local_pref = struct.unpack("!I", val)[0]
        elif code == ATTR_ATOMIC_AGGREGATE:
            if len(val) != 0:
                errors.append("malformed ATOMIC_AGGREGATE discarded")
            else:
                atomic = True
        elif code == ATTR_AGGREGATOR:
            if len(val) != (8 if as4 else 6):
                errors.append("malformed AGGREGATOR discarded")
            else:
                if as4:
                    a = struct.unpack("!I", val[:4])[0]
                else:
                    a = struct.unpack("!H", val[:2])[0]
                ip = val[-4:]
                aggregator = (a, f"{ip[0]}.{ip[1]}.{ip[2]}.{ip[3]}")
        elif code == ATTR_COMMUNITIES:
            if len(val) % 4:
                errors.append("malformed COMMUNITIES")
                taw = True
            else:
                communities = struct.unpack(f"!{len(val) // 4}I", val)
        elif code == ATTR_AS4_PATH:
            if as4:
                continue   # RFC 6793: ignored between NEW speakers
            try:
                p = decode_as_path(val, True)
                if any(t in (AS_CONFED_SEQUENCE, AS_CONFED_SET) for t, _ in p):
                    raise ValueError("confederation segment in AS4_PATH")
                as4_path = p
            except ValueError as e:
                errors.append(f"malformed AS4_PATH discarded: {e}")
        elif code == ATTR_AS4_AGGREGATOR:
            if as4:
                continue
            if len(val) != 8:
                errors.append("malformed AS4_AGGREGATOR discarded")
            else:
                ip = val[4:]
                as4_aggregator = (struct.unpack("!I", val[:4])[0], f"{ip[0]}.{ip[1]}.{ip[2]}.{ip[3]}")
        # others (ext communities, large communities, originator, cluster): accepted, unused

    if cut and mp_nlri and (mp_reach is None or mp_unreach is None):
        # RFC 7606 5.2 / 3.j: treat-as-withdraw needs every NLRI located; an MP attribute
        # may sit in the unread rest of the list, so only a session reset is safe
        raise BgpError(3, 1, reason="attribute list malformed before the MP_REACH_NLRI/"
                                    "MP_UNREACH_NLRI could be located")
    if nh_malformed:
        if nlri:
            errors.append("malformed NEXT_HOP")
            taw = True
        else:
            # RFC 4760 3: an UPDATE with no IPv4 NLRI ignores NEXT_HOP
            errors.append("malformed NEXT_HOP ignored (no IPv4 NLRI: RFC 4760 3)")

    # RFC 6793 4.2.3 reconstruction
    if not as4 and as_path is not None:
        if aggregator is not None and as4_aggregator is not None:
            if aggregator[0] != AS_TRANS:
                as4_path = None        # ignore AS4_AGGREGATOR and AS4_PATH
            else:
                aggregator = as4_aggregator
        if as4_path is not None:
            as_path = merge_as4_path(as_path, as4_path)

    # End-of-RIB for another AFI: MP_UNREACH with no prefixes and nothing else
    if mp_unreach is not None and not mp_unreach[2] and not other_attrs \
            and not withdrawn and not nlri and mp_reach is None:
        res.eor = (mp_unreach[0], mp_unreach[1])
        return res

    announced_prefixes = list(nlri)
    mp_nh = None
    if mp_reach is not None and mp_reach[1] == SAFI_UNICAST and mp_reach[0] in (AFI_IPV4, AFI_IPV6):
        announced_prefixes += mp_reach[3]
        mp_nh = mp_reach[2]
        res.link_local = mp_reach[4]
    res.withdrawn = list(withdrawn)
    if mp_unreach is not None and mp_unreach[1] == SAFI_UNICAST:
        res.withdrawn += mp_unreach[2]

    if announced_prefixes and not taw:
        missing = []
        if origin is None:
            missing.append(ATTR_ORIGIN)
        if as_path is None:
            missing.append(ATTR_AS_PATH)
        if nlri and next_hop is None:
            missing.append(ATTR_NEXT_HOP)
        if missing:
            errors.append("missing well-known attribute(s) " + ",".join(map(str, missing)))
            taw = True       # RFC 7606 3.d
    if taw:
        res.treat_as_withdraw = True
        res.withdrawn += announced_prefixes
        return res
    if announced_prefixes:
        # one shared (interned) attribute object per next hop of the UPDATE
        common = (as_path, origin, med, local_pref, tuple(communities), atomic, aggregator)
        if nlri:
            res.announced = routes_sharing(nlri, intern_attributes(PathAttributes(next_hop, *common)))
        if mp_reach is not None and mp_nh is not None and mp_reach[3]:
            res.announced += routes_sharing(mp_reach[3], intern_attributes(PathAttributes(mp_nh, *common)))
    return res


def _decode_mp_reach(val) -> tuple:
    if len(val) < 5:
        raise ValueError("MP_REACH_NLRI too short")
    afi, safi, nhl = struct.unpack_from("!HBB", val)
    if 4 + nhl + 1 > len(val):
        raise ValueError("next hop overruns")
    nh_raw = bytes(val[4:4 + nhl])
    nlri_raw = val[5 + nhl:]
    if safi != SAFI_UNICAST or afi not in (AFI_IPV4, AFI_IPV6):
        return (afi, safi, None, [], None)
    link_local = None
    if afi == AFI_IPV4:
        if nhl != 4:
            raise ValueError(f"IPv4 next hop length {nhl}")
        nh = str(ipaddress.IPv4Address(nh_raw))
    else:
        # RFC 2545 3: the global address, optionally followed by the link-local one
        if nhl not in (16, 32):
            raise ValueError(f"IPv6 next hop length {nhl} (16 or 32 expected)")
        nh = str(ipaddress.IPv6Address(nh_raw[:16]))
        if nhl == 32:
            ll = ipaddress.IPv6Address(nh_raw[16:])
            link_local = str(ll) if ll.is_link_local else None
    return (afi, safi, nh, decode_prefixes(nlri_raw, afi), link_local)


def _decode_mp_unreach(val) -> tuple:
    if len(val) < 3:
        raise ValueError("MP_UNREACH_NLRI too short")
    afi, safi = struct.unpack_from("!HB", val)
    if safi != SAFI_UNICAST or afi not in (AFI_IPV4, AFI_IPV6):
        return (afi, safi, [])
    return (afi, safi, decode_prefixes(val[3:], afi))


# ------------------------------------------------------------------- generic decode
def decode_message(mtype: int, body, *, as4: bool = True):
    """Decode a non-UPDATE message body (UPDATEs go through decode_update)."""
    if mtype == OPEN:
        return decode_open(bytes(body))
    if mtype == KEEPALIVE:
        return Keepalive()
    if mtype == NOTIFICATION:
        return decode_notification(bytes(body))
    if mtype == ROUTE_REFRESH:
        return decode_route_refresh(bytes(body))
    if mtype == UPDATE:
        return decode_update(body, as4=as4)
    raise BgpError(1, 3, bytes([mtype]))
