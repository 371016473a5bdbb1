"""The configuration of one IKEv1 tunnel (what :class:`cgwd.ike.v1.peer.IkePeer` takes)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from cgwd.ipsec_sa import ENCRYPTION_ALGORITHMS, INTEGRITY_ALGORITHMS

from .algorithms import parse_esp_proposal, parse_ike_proposal
from .codec import parse_identity


@dataclass
class IkePeerConfig:
    """One tunnel's IKEv1 settings (defaults are AWS's); proposals in strongSwan's syntax."""

    local_address: str
    remote_address: str
    psk: bytes = field(repr=False)
    local_id: str | None = None
    remote_id: str | None = None
    ike_proposals: list[str] = field(default_factory=lambda: ["aes128-sha1-modp1024"])
    esp_proposals: list[str] = field(default_factory=lambda: ["aes128-sha1-modp1024"])
    ike_lifetime: int = 28800
    ipsec_lifetime: int = 3600
    ipsec_lifetime_kb: int = 0
    rekey_margin: int = 540
    rekey_fuzz: int = 100
    dpd_interval: float = 10
    dpd_retries: int = 3
    dpd_action: str = "restart"
    nat_traversal: str = "auto"
    local_ts: str = "0.0.0.0/0"
    remote_ts: str = "0.0.0.0/0"
    retransmit_timeout: float = 2.0
    retransmit_tries: int = 5
    initiator: bool = True
    # What the data path can install (names of cgwd.ipsec_sa's ENCRYPTION_ALGORITHMS and
    # INTEGRITY_ALGORITHMS); None: anything. Only those proposals are offered and accepted.
    esp_allowed: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.psk, str):
            self.psk = self.psk.encode()
        if not self.psk:
            raise ValueError("empty pre-shared key")
        self.ike_algs = [parse_ike_proposal(p) for p in self.ike_proposals]
        self.esp_algs = [parse_esp_proposal(p) for p in self.esp_proposals]
        if not self.ike_algs or not self.esp_algs:
            raise ValueError("need at least one IKE and one ESP proposal")
        self.esp_unusable: list[str] = []  # configured, but the data path cannot install them
        if self.esp_allowed is not None:
            allowed = frozenset(self.esp_allowed)
            unknown = allowed - set(ENCRYPTION_ALGORITHMS) - set(INTEGRITY_ALGORITHMS)
            if unknown:
                raise ValueError(f"esp_allowed: unknown algorithm(s) {', '.join(sorted(unknown))}")
            usable = [a for a in self.esp_algs
                      if a.encryption in allowed and (a.integrity is None or a.integrity in allowed)]
            self.esp_unusable = [a.name for a in self.esp_algs if a not in usable]
            if not usable:
                raise ValueError(f"none of the ESP proposals ({', '.join(self.esp_proposals)}) can be installed by the "
                                 f"data path (it supports {', '.join(sorted(allowed)) or 'nothing'})")
            self.esp_algs = usable
        if self.dpd_action not in ("clear", "restart", "hold"):
            raise ValueError(f"dpd_action must be clear|restart|hold, not {self.dpd_action!r}")
        if self.nat_traversal not in ("auto", "force", "off"):
            raise ValueError(f"nat_traversal must be auto|force|off, not {self.nat_traversal!r}")
        ipaddress.ip_address(self.local_address)
        ipaddress.ip_address(self.remote_address)
        self.local_ts_net = ipaddress.ip_network(self.local_ts, strict=False)
        self.remote_ts_net = ipaddress.ip_network(self.remote_ts, strict=False)
        if self.local_ts_net.version != self.remote_ts_net.version:
            raise ValueError(f"local_ts {self.local_ts} and remote_ts {self.remote_ts} must be of one family "
                             "(an SA pair carries IPv4 or IPv6)")
        self.local_id_tuple = parse_identity(self.local_id or self.local_address)
        self.remote_id_tuple = parse_identity(self.remote_id or self.remote_address)
