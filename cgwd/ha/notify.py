"""``cgwctl ha notify STATE``: what a VRRP transition does, for keepalived's notify hooks.

keepalived calls ``notify_master``/``notify_backup``/``notify_fault``/``notify_stop`` (or one
``notify`` script with ``INSTANCE NAME STATE PRIORITY``); each call runs the actions of
:data:`ACTIONS` for the new state, one at a time (a lock in ``state_dir``), and records the
transition and what the actions did in ``state_dir/ha.json`` (``cgwctl ha status``).

Only MASTER acts: it takes the VPC routes (and the Elastic IP) when ``[ha.ec2]`` is set. The
other states leave the routes alone: the box that becomes MASTER takes them, and a box that
merely lost the role cannot know the peer is alive to take them. keepalived starts notify
scripts without waiting for the last one, so a MASTER whose virtual address (``[ha.vrrp]``)
is gone again by the time it holds the lock does nothing: the later transition's call acts.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import ipaddress
import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .config import HaConfig
from .retry import HaError, RetryPolicy

__all__ = ["ACTIONS", "Action", "NotifyOutcome", "Takeover", "VrrpState", "parse_state", "run_notify",
           "read_state"]


class VrrpState(enum.StrEnum):
    MASTER = "MASTER"
    BACKUP = "BACKUP"
    FAULT = "FAULT"
    STOP = "STOP"


class Action(enum.StrEnum):
    EC2_TAKEOVER = "ec2-takeover"  # the route tables' entries (and the Elastic IP) -> this interface


#: the actions each state runs (those whose settings are configured)
ACTIONS: dict[VrrpState, tuple[Action, ...]] = {
    VrrpState.MASTER: (Action.EC2_TAKEOVER,),
    VrrpState.BACKUP: (),
    VrrpState.FAULT: (),
    VrrpState.STOP: (),
}


def parse_state(args: list[str]) -> VrrpState:
    """``STATE``, or keepalived's ``notify`` arguments ``INSTANCE|GROUP NAME STATE [PRIORITY]``."""
    if len(args) == 1:
        word = args[0]
    elif len(args) in (3, 4) and args[0].upper() in ("INSTANCE", "GROUP"):
        word = args[2]
    else:
        raise ValueError("give STATE (MASTER, BACKUP, FAULT or STOP), or keepalived's notify arguments "
                         "INSTANCE NAME STATE [PRIORITY]")
    try:
        return VrrpState(word.upper())
    except ValueError:
        raise ValueError(f"unknown state {word!r} (MASTER, BACKUP, FAULT or STOP)") from None


@dataclass
class NotifyOutcome:
    state: VrrpState
    ok: bool
    lines: list[str] = field(default_factory=list)


class Takeover:
    """The EC2 takeover with its parts injected (IMDS, the API, the environment)."""

    def __init__(self, cfg: HaConfig, *, environ: dict[str, str] | None = None,
                 sleep: Callable[[float], None] = time.sleep, imds_factory=None, api_factory=None):
        self.cfg = cfg
        self.environ = dict(os.environ if environ is None else environ)
        self.sleep = sleep
        self.imds_factory = imds_factory
        self.api_factory = api_factory

    def _imds(self):
        from .imds import Imds

        e = self.cfg.ec2
        make = self.imds_factory or (lambda url: Imds(url, timeout=e.timeout,
                                                      policy=RetryPolicy(attempts=min(3, e.attempts)),
                                                      sleep=self.sleep))
        return make(e.imds_url)

    def credentials(self, imds):
        """From the environment when it has a key (an operator's choice), else the instance role."""
        from .imds import Credentials

        env = self.environ
        if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
            return Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_SESSION_TOKEN"),
                               None, "environment")
        creds = imds.credentials()
        if creds is None:
            raise HaError("no AWS credentials: the instance has no role (attach one with the policy that "
                          "`cgwctl ha check` prints) and none is in the environment", code="credentials")
        return creds

    def context(self):
        """(identity, interface id, API client, credentials' source)."""
        from .ec2 import make_api

        e = self.cfg.ec2
        imds = self._imds()
        ident = imds.identity()
        creds = self.credentials(imds)
        region = e.region or ident.region
        make = self.api_factory or make_api
        api = make(region=region, credentials=creds, endpoint_url=e.endpoint_url, timeout=e.timeout)
        return ident, e.network_interface or ident.interface_id, api, creds.source

    def run(self, *, dry_run: bool = False) -> tuple[bool, list[str]]:
        from .ec2 import take_over

        e = self.cfg.ec2
        try:
            ident, eni, api, source = self.context()
        except HaError as err:
            return False, [f"error: {err}"]
        res = take_over(api, route_tables=e.route_tables, prefixes=e.prefixes, eni=eni, elastic_ip=e.elastic_ip,
                        policy=RetryPolicy(attempts=e.attempts), sleep=self.sleep, dry_run=dry_run)
        head = f"ec2: instance {ident.instance_id} interface {eni} in {e.region or ident.region} ({source}): {res.summary}"
        return res.ok, [head] + [f"ec2: {line}" for line in res.lines]


def _state_path(cfg: HaConfig) -> str:
    return os.path.join(cfg.state_dir, "ha.json")


@contextlib.contextmanager
def _locked(cfg: HaConfig) -> Iterator[None]:
    os.makedirs(cfg.state_dir, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(cfg.state_dir, "ha.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_state(cfg: HaConfig) -> dict | None:
    try:
        with open(_state_path(cfg)) as f:
            got = json.load(f)
        return got if isinstance(got, dict) else None
    except (OSError, ValueError):
        return None


def _write_state(cfg: HaConfig, doc: dict) -> None:
    path = _state_path(cfg)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def vip_present(interface: str, vips: tuple[str, ...]) -> bool | None:
    """Whether one of the virtual addresses is on ``interface`` now (None: cannot tell)."""
    try:
        from pyroute2 import IPRoute
    except ImportError:
        return None
    want = {str(ipaddress.ip_interface(v).ip) for v in vips}
    try:
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=interface)
            if not idx:
                return None
            have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx[0])}
    except OSError:
        return None
    return bool(want & have)


def run_notify(state: VrrpState, cfg: HaConfig, *, takeover: Takeover | None = None,
               still_master: Callable[[], bool | None] | None = None,
               clock: Callable[[], float] = time.time) -> NotifyOutcome:
    """Run the actions of ``state`` under the lock, record the transition; never raises for
    a failing action (the outcome says what failed, in one line each)."""
    out = NotifyOutcome(state, True)
    with _locked(cfg):
        prev = read_state(cfg) or {}
        actions = ACTIONS[state]
        if state == VrrpState.MASTER and cfg.vrrp is not None:
            check = still_master or (lambda: vip_present(cfg.vrrp.interface, cfg.vrrp.virtual_ipaddress))
            if check() is False:
                actions = ()
                out.lines.append("superseded: the virtual address is no longer here (a later transition acts)")
        for action in actions:
            if action == Action.EC2_TAKEOVER and cfg.ec2 is not None:
                ok, lines = (takeover or Takeover(cfg)).run()
                out.ok &= ok
                out.lines.extend(lines)
        if not out.lines:
            out.lines.append(f"{state.value}: nothing to do" + ("" if state != VrrpState.MASTER else
                                                                 " (no [ha.ec2] configured)"))
        now = clock()
        doc = {"state": state.value, "since": now, "previous": prev.get("state"),
               "transitions": int(prev.get("transitions", 0)) + 1, "ok": out.ok, "actions": out.lines}
        _write_state(cfg, doc)
    return out
