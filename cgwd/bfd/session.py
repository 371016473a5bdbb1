"""One BFD session, sans-IO (RFC 5880 asynchronous mode; no echo, demand or authentication).

Input: :meth:`BfdSession.receive` (a datagram, ``now``), :meth:`BfdSession.timer` (``now``),
:meth:`BfdSession.admin_down` / :meth:`BfdSession.admin_up`, :meth:`BfdSession.set_params`
(a reload: new intervals go out with a Poll Sequence). Output, polled:
:meth:`BfdSession.datagrams_to_send`, :meth:`BfdSession.next_event` (:class:`BfdUp`,
:class:`BfdDown` with the diag), :meth:`BfdSession.next_deadline` (the earliest of the one
schedule: next transmission, detection time). ``now`` is float seconds (monotonic); intervals
are integer microseconds as on the wire.

The state moves only by :data:`TRANSITIONS` (RFC 5880 6.8.6 and 6.8.4, 6.8.16): the key is
(local state, what happened), the value (new state, the diag to set or None: unchanged).

Timers (6.8.2-6.8.4, 6.8.7):

* advertised Desired Min TX is at least 1 s while the session is not Up (6.8.3);
* a change of what we advertise starts a Poll Sequence (P set until a packet with F arrives).
  While it runs, the interval we transmit at does not grow and the detection time does not
  shrink (the peer has not yet acknowledged the change); F applies the new values;
* the transmit interval is max(our Desired Min TX, the peer's Required Min RX), less a random
  0-25 % (10-25 % when Detect Mult is 1), from the injected ``rand``; nothing periodic is sent
  while the peer's Required Min RX is 0;
* detection time = the peer's Detect Mult x max(our Required Min RX, the peer's Desired Min
  TX), restarted by every accepted packet, running in Init and Up.

A packet is also sent at once on a local state change and in reply to a Poll (with F).
"""
from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from .codec import BfdDrop, BfdState, ControlPacket, Diag, decode, diag_text

SLOW_TX_US = 1_000_000          # 6.8.3: Desired Min TX while not Up


class Ev(enum.Enum):
    """What moves the state machine."""

    RECV_ADMIN_DOWN = "received AdminDown"
    RECV_DOWN = "received Down"
    RECV_INIT = "received Init"
    RECV_UP = "received Up"
    TIMEOUT = "detection time expired"
    ADMIN_DOWN = "admin down"
    ADMIN_UP = "admin up"


_RECV = {BfdState.ADMIN_DOWN: Ev.RECV_ADMIN_DOWN, BfdState.DOWN: Ev.RECV_DOWN,
         BfdState.INIT: Ev.RECV_INIT, BfdState.UP: Ev.RECV_UP}

A, D, I, U = BfdState.ADMIN_DOWN, BfdState.DOWN, BfdState.INIT, BfdState.UP

#: (state, event) -> (new state, diag to set or None). Every pair is listed.
TRANSITIONS: dict[tuple[BfdState, Ev], tuple[BfdState, Diag | None]] = {
    # AdminDown: received packets are discarded (6.8.6); only the operator brings it back
    (A, Ev.RECV_ADMIN_DOWN): (A, None), (A, Ev.RECV_DOWN): (A, None), (A, Ev.RECV_INIT): (A, None),
    (A, Ev.RECV_UP): (A, None), (A, Ev.TIMEOUT): (A, None), (A, Ev.ADMIN_DOWN): (A, None),
    (A, Ev.ADMIN_UP): (D, Diag.NONE),
    # Down: the three-way handshake
    (D, Ev.RECV_ADMIN_DOWN): (D, None), (D, Ev.RECV_DOWN): (I, None), (D, Ev.RECV_INIT): (U, Diag.NONE),
    (D, Ev.RECV_UP): (D, None), (D, Ev.TIMEOUT): (D, None), (D, Ev.ADMIN_DOWN): (A, Diag.ADMIN_DOWN),
    (D, Ev.ADMIN_UP): (D, None),
    # Init
    (I, Ev.RECV_ADMIN_DOWN): (D, Diag.NEIGHBOR_DOWN), (I, Ev.RECV_DOWN): (I, None),
    (I, Ev.RECV_INIT): (U, Diag.NONE), (I, Ev.RECV_UP): (U, Diag.NONE),
    (I, Ev.TIMEOUT): (D, Diag.DETECT_EXPIRED), (I, Ev.ADMIN_DOWN): (A, Diag.ADMIN_DOWN), (I, Ev.ADMIN_UP): (I, None),
    # Up
    (U, Ev.RECV_ADMIN_DOWN): (D, Diag.NEIGHBOR_DOWN), (U, Ev.RECV_DOWN): (D, Diag.NEIGHBOR_DOWN),
    (U, Ev.RECV_INIT): (U, None), (U, Ev.RECV_UP): (U, None),
    (U, Ev.TIMEOUT): (D, Diag.DETECT_EXPIRED), (U, Ev.ADMIN_DOWN): (A, Diag.ADMIN_DOWN), (U, Ev.ADMIN_UP): (U, None),
}


@dataclass(frozen=True)
class BfdParams:
    desired_min_tx: int = 300_000     # microseconds
    required_min_rx: int = 300_000
    detect_mult: int = 3

    @classmethod
    def from_ms(cls, interval_ms: int, mult: int) -> "BfdParams":
        return cls(interval_ms * 1000, interval_ms * 1000, mult)


@dataclass(frozen=True)
class BfdUp:
    at: float


@dataclass(frozen=True)
class BfdDown:
    at: float
    diag: Diag
    was_up: bool                 # from Up (else from Init)
    remote_admin_down: bool      # the peer signalled AdminDown (RFC 5882 3.2: not a path failure)
    new_state: BfdState = BfdState.DOWN

    @property
    def path_failure(self) -> bool:
        """From Up, by detection time or the peer's Down: what tears the client (BGP) down."""
        return self.was_up and not self.remote_admin_down and self.new_state is BfdState.DOWN


class Deadline(enum.Enum):
    TX = "tx"
    DETECT = "detect"


class BfdSession:
    def __init__(self, params: BfdParams, *, local_disc: int, rand: Callable[[], float], now: float,
                 admin_down: bool = False) -> None:
        if not 0 < local_disc < 2 ** 32:
            raise ValueError("local discriminator must be 1 to 2**32-1")
        self.params = params
        self.rand = rand
        self.state = BfdState.ADMIN_DOWN if admin_down else BfdState.DOWN
        self.local_disc = local_disc
        self.local_diag = Diag.ADMIN_DOWN if admin_down else Diag.NONE
        self.remote_disc = 0
        self.remote_state = BfdState.DOWN
        self.remote_diag = 0
        self.remote_min_rx = 1            # bfd.RemoteMinRxInterval, initially 1 us (6.8.1)
        self.remote_desired_tx = 0        # 0: no packet seen yet
        self.remote_mult = 0
        self.remote_demand = False
        self.polling = False
        self.adv_tx, self.adv_rx = self._advertised()
        self.use_tx, self.use_rx = self.adv_tx, self.adv_rx
        self._deadlines: dict[Deadline, float] = {Deadline.TX: now}
        self._out: list[bytes] = []
        self._events: list[object] = []
        self.ups = 0
        self.downs = 0
        self.last_down_diag: Diag | None = None
        self.packets_in = 0
        self.packets_out = 0
        self.drops: Counter[str] = Counter()
        self.transitions: list[tuple[BfdState, Ev, BfdState]] = []   # the last few, for tests/status
        self.up_since: float | None = None

    # ------------------------------------------------------------ outputs
    def datagrams_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def next_event(self):
        return self._events.pop(0) if self._events else None

    def next_deadline(self) -> float | None:
        return min(self._deadlines.values()) if self._deadlines else None

    # ------------------------------------------------------------ derived values
    def _advertised(self) -> tuple[int, int]:
        tx = self.params.desired_min_tx
        if self.state is not BfdState.UP:
            tx = max(tx, SLOW_TX_US)
        return tx, self.params.required_min_rx

    @property
    def tx_interval(self) -> int | None:
        """The negotiated transmit interval (us) before jitter; None: not transmitting."""
        if self.remote_min_rx == 0:
            return None
        return max(self.use_tx, self.remote_min_rx)

    @property
    def detection_time(self) -> int | None:
        """Microseconds; None before the first packet from the peer."""
        if not self.remote_mult:
            return None
        return self.remote_mult * max(self.use_rx, self.remote_desired_tx)

    def _jittered(self, interval_us: int) -> float:
        span = 0.15 if self.params.detect_mult == 1 else 0.25
        r = min(max(float(self.rand()), 0.0), 1.0)
        return interval_us * (0.75 + span * r) / 1e6

    # ------------------------------------------------------------ inputs
    def receive(self, data: bytes, now: float) -> None:
        try:
            p = decode(data)
            if p.your_disc and p.your_disc != self.local_disc:
                raise BfdDrop("your_discriminator_unknown", f"{p.your_disc} is not ours ({self.local_disc})")
        except BfdDrop as e:
            self.drops[e.reason] += 1
            return
        self.packets_in += 1
        self.remote_disc = p.my_disc
        self.remote_state = p.state
        self.remote_diag = p.diag
        self.remote_demand = p.demand
        self.remote_min_rx = p.required_min_rx
        self.remote_desired_tx = p.desired_min_tx
        self.remote_mult = p.detect_mult
        if p.final and self.polling:
            self.polling = False
            self.use_tx, self.use_rx = self.adv_tx, self.adv_rx
        if self.state is BfdState.ADMIN_DOWN:
            self.drops["admin_down"] += 1
            return
        self._move(_RECV[p.state], now)
        if self.state in (BfdState.INIT, BfdState.UP):
            self._deadlines[Deadline.DETECT] = now + self.detection_time / 1e6
        if p.poll:
            self._send(now, final=True)
        self._retime_tx(now)

    def timer(self, now: float) -> None:
        """Run what is due at ``now``; afterwards every deadline is later than ``now``."""
        det = self._deadlines.get(Deadline.DETECT)
        if det is not None and det <= now:
            del self._deadlines[Deadline.DETECT]
            if self.state in (BfdState.INIT, BfdState.UP):
                self._move(Ev.TIMEOUT, now)
        tx = self._deadlines.get(Deadline.TX)
        if tx is not None and tx <= now:
            self._send(now)
            self._arm_tx(now)

    def admin_down(self, now: float) -> None:
        self._move(Ev.ADMIN_DOWN, now)

    def admin_up(self, now: float) -> None:
        self._move(Ev.ADMIN_UP, now)

    def set_params(self, params: BfdParams, now: float) -> bool:
        """A reload: new intervals/multiplier (a Poll Sequence tells the peer); True if changed."""
        if params == self.params:
            return False
        self.params = params
        self._renegotiate(now)
        self._send(now)
        self._arm_tx(now)
        return True

    # ------------------------------------------------------------ internals
    def _move(self, ev: Ev, now: float) -> None:
        old = self.state
        new, diag = TRANSITIONS[(old, ev)]
        if diag is not None:
            self.local_diag = diag
        if new is old:
            return
        self.state = new
        self.transitions = (self.transitions + [(old, ev, new)])[-16:]
        if new is BfdState.UP:
            self.ups += 1
            self.up_since = now
            self._events.append(BfdUp(now))
        elif old in (BfdState.UP, BfdState.INIT) and new in (BfdState.DOWN, BfdState.ADMIN_DOWN):
            if old is BfdState.UP:
                self.downs += 1
                self.up_since = None
            self.last_down_diag = self.local_diag
            self._events.append(BfdDown(now, self.local_diag, old is BfdState.UP,
                                        ev is Ev.RECV_ADMIN_DOWN, new))
        if new not in (BfdState.INIT, BfdState.UP):
            self._deadlines.pop(Deadline.DETECT, None)
        if ev is Ev.TIMEOUT:
            self.remote_disc = 0          # 6.8.1: zeroed when the detection time expires
            self.remote_state = BfdState.DOWN
            self.polling = False
        self._renegotiate(now)
        self._send(now)
        self._arm_tx(now)

    def _renegotiate(self, now: float) -> None:
        tx, rx = self._advertised()
        if (tx, rx) == (self.adv_tx, self.adv_rx):
            return
        self.adv_tx, self.adv_rx = tx, rx
        if self.state is BfdState.UP and self.remote_disc:
            self.polling = True
            self.use_tx = min(self.use_tx, tx)      # 6.8.3: no slower TX before the Final
            self.use_rx = max(self.use_rx, rx)      # and no shorter detection time
        else:
            self.polling = bool(self.remote_disc)
            self.use_tx, self.use_rx = tx, rx

    def _packet(self, final: bool) -> ControlPacket:
        return ControlPacket(state=self.state, my_disc=self.local_disc, your_disc=self.remote_disc,
                             diag=int(self.local_diag), detect_mult=self.params.detect_mult,
                             desired_min_tx=self.adv_tx, required_min_rx=self.adv_rx, required_min_echo_rx=0,
                             poll=self.polling and not final, final=final)

    def _send(self, now: float, final: bool = False) -> None:
        self._out.append(self._packet(final).encode())
        self.packets_out += 1

    def _arm_tx(self, now: float) -> None:
        iv = self.tx_interval
        if iv is None:
            self._deadlines.pop(Deadline.TX, None)
        else:
            self._deadlines[Deadline.TX] = now + self._jittered(iv)

    def _retime_tx(self, now: float) -> None:
        """After the peer's values changed: send sooner if the interval is now shorter (6.8.7)."""
        iv = self.tx_interval
        cur = self._deadlines.get(Deadline.TX)
        if iv is None:
            self._deadlines.pop(Deadline.TX, None)
        elif cur is None or cur > now + iv / 1e6:
            self._arm_tx(now)

    # ------------------------------------------------------------ status
    def status(self) -> dict:
        det, iv = self.detection_time, self.tx_interval
        return {
            "state": self.state.label.lower() if self.state is not BfdState.ADMIN_DOWN else "admindown",
            "remote_state": self.remote_state.label.lower() if self.remote_state is not BfdState.ADMIN_DOWN
            else "admindown",
            "local_discriminator": self.local_disc, "remote_discriminator": self.remote_disc,
            "tx_interval_ms": iv / 1000 if iv is not None else None,
            "detection_time_ms": det / 1000 if det is not None else None,
            "desired_min_tx_ms": self.adv_tx / 1000, "required_min_rx_ms": self.adv_rx / 1000,
            "detect_mult": self.params.detect_mult, "remote_detect_mult": self.remote_mult,
            "remote_min_rx_ms": self.remote_min_rx / 1000, "remote_desired_tx_ms": self.remote_desired_tx / 1000,
            "polling": self.polling, "ups": self.ups, "downs": self.downs,
            "local_diag": self.local_diag.text,
            "last_down_diag": self.last_down_diag.text if self.last_down_diag is not None else None,
            "remote_diag": diag_text(self.remote_diag),
            "packets_in": self.packets_in, "packets_out": self.packets_out,
            "drops": dict(sorted(self.drops.items())), "drops_total": sum(self.drops.values()),
        }
