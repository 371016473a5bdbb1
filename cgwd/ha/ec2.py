"""The EC2 route-table takeover (seed 004 as a feature), through botocore.

On becoming the active box, the VPC route tables' entries for the prefixes this pair
carries (the remote side's, as the VPC sees them) are pointed at this instance's network
interface: ``ReplaceRoute`` where an entry exists and points elsewhere, ``CreateRoute`` where
none does (or only a propagated one: a static route wins over a propagated one), nothing
where it already points here. Optionally the Elastic IP moves to this interface
(``AssociateAddress`` with reassociation). The plan is data (:func:`plan_routes`, pure);
:func:`take_over` applies it through the :class:`Ec2Api` seam.

The IAM policy the instance role needs (scope the route tables by ARN where you can)::

    {"Version": "2012-10-17", "Statement": [
      {"Effect": "Allow", "Action": ["ec2:DescribeRouteTables", "ec2:DescribeInstanceAttribute",
                                     "ec2:DescribeAddresses"], "Resource": "*"},
      {"Effect": "Allow", "Action": ["ec2:ReplaceRoute", "ec2:CreateRoute"],
       "Resource": "arn:aws:ec2:REGION:ACCOUNT:route-table/rtb-..."},
      {"Effect": "Allow", "Action": ["ec2:AssociateAddress"], "Resource": "*"}]}

The instance must forward traffic that is not addressed to it: its source/destination
check must be off (``aws ec2 modify-instance-attribute --instance-id i-... --no-source-dest-check``);
``cgwctl ha check`` reads it with DescribeInstanceAttribute.

Every API error becomes one line (:class:`cgwd.ha.retry.HaError`): throttling, timeouts and
AWS's 5xx are retried with backoff and the attempts counted; access denied, a missing route
table or bad credentials are not retried. botocore's own retries are switched off so that
the count is ours.
"""

from __future__ import annotations

import enum
import ipaddress
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from .retry import HaError, RetryPolicy, with_retries

__all__ = [
    "Ec2Api",
    "IAM_POLICY",
    "RouteAction",
    "RouteStep",
    "TakeoverResult",
    "classify_error",
    "make_api",
    "plan_routes",
    "source_dest_check",
    "take_over",
]

IAM_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["ec2:DescribeRouteTables", "ec2:DescribeInstanceAttribute",
                                       "ec2:DescribeAddresses"], "Resource": "*"},
        {"Effect": "Allow", "Action": ["ec2:ReplaceRoute", "ec2:CreateRoute"],
         "Resource": "arn:aws:ec2:REGION:ACCOUNT:route-table/rtb-..."},
        {"Effect": "Allow", "Action": ["ec2:AssociateAddress"], "Resource": "*"},
    ],
}


class Ec2Api(Protocol):
    """The EC2 calls the takeover makes (botocore's client has exactly these)."""

    def describe_route_tables(self, **kw: Any) -> dict: ...
    def replace_route(self, **kw: Any) -> dict: ...
    def create_route(self, **kw: Any) -> dict: ...
    def describe_instance_attribute(self, **kw: Any) -> dict: ...
    def describe_addresses(self, **kw: Any) -> dict: ...
    def associate_address(self, **kw: Any) -> dict: ...


class RouteStep(enum.StrEnum):
    KEEP = "keep"          # already points at this interface
    REPLACE = "replace"    # exists, points elsewhere (another interface, instance, blackhole)
    CREATE = "create"      # missing, or only propagated (a static route takes precedence)
    REFUSE = "refuse"      # the VPC's local route: not ours to move


@dataclass(frozen=True)
class RouteAction:
    table: str
    prefix: str
    step: RouteStep
    current: str | None = None  # what the entry points at now

    def describe(self, eni: str) -> str:
        now = f" (was {self.current})" if self.current else ""
        if self.step == RouteStep.KEEP:
            return f"{self.table} {self.prefix}: already -> {eni}"
        if self.step == RouteStep.REFUSE:
            return f"{self.table} {self.prefix}: the VPC's local route, not replaced"
        return f"{self.table} {self.prefix}: {self.step.value} -> {eni}{now}"


def _dest_key(prefix: str) -> str:
    return "DestinationIpv6CidrBlock" if ipaddress.ip_network(prefix).version == 6 else "DestinationCidrBlock"


def _target(route: dict) -> str:
    for k in ("NetworkInterfaceId", "InstanceId", "GatewayId", "NatGatewayId", "TransitGatewayId",
              "VpcPeeringConnectionId", "LocalGatewayId", "CarrierGatewayId", "EgressOnlyInternetGatewayId"):
        if route.get(k):
            return str(route[k]) + (" (blackhole)" if route.get("State") == "blackhole" else "")
    return "nothing (blackhole)" if route.get("State") == "blackhole" else "unknown target"


def _same_net(value: object, net) -> bool:
    try:
        return ipaddress.ip_network(str(value), strict=False) == net
    except ValueError:
        return False


def plan_routes(described: dict, route_tables: tuple[str, ...] | list[str], prefixes: tuple[str, ...] | list[str],
                eni: str) -> list[RouteAction]:
    """Which routes to replace or create so that ``prefixes`` in ``route_tables`` point at
    ``eni``, from a DescribeRouteTables response. A table missing from the response raises
    :class:`HaError` (not found, or not visible to this role)."""
    tables = {t.get("RouteTableId"): t for t in described.get("RouteTables") or [] if isinstance(t, dict)}
    out: list[RouteAction] = []
    for rtb in route_tables:
        t = tables.get(rtb)
        if t is None:
            raise HaError(f"route table {rtb} not found (wrong id or region, or not visible to this role)",
                          code="not_found")
        for prefix in prefixes:
            key = _dest_key(prefix)
            net = ipaddress.ip_network(prefix)
            entries = [r for r in t.get("Routes") or [] if isinstance(r, dict) and _same_net(r.get(key), net)]
            static = [r for r in entries if r.get("Origin") != "EnableVgwRoutePropagation"]
            if not static:
                via = _target(entries[0]) + ", propagated" if entries else None
                out.append(RouteAction(rtb, prefix, RouteStep.CREATE, via))
                continue
            r = static[0]
            if r.get("Origin") == "CreateRouteTable" or r.get("GatewayId") == "local":
                out.append(RouteAction(rtb, prefix, RouteStep.REFUSE, "local"))
            elif r.get("NetworkInterfaceId") == eni and r.get("State", "active") == "active":
                out.append(RouteAction(rtb, prefix, RouteStep.KEEP, eni))
            else:
                out.append(RouteAction(rtb, prefix, RouteStep.REPLACE, _target(r)))
    return out


# ---------------------------------------------------------------------------- errors

THROTTLED = frozenset({"Throttling", "ThrottlingException", "RequestLimitExceeded", "RequestThrottled",
                       "TooManyRequestsException", "SlowDown"})
DENIED = frozenset({"UnauthorizedOperation", "AccessDenied", "AccessDeniedException"})
AUTH = frozenset({"AuthFailure", "InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken",
                  "RequestExpired", "UnrecognizedClientException"})
SERVER = frozenset({"InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable"})


def classify_error(exc: BaseException) -> HaError | None:
    """One line and a code for an exception from botocore (None: not an API failure)."""
    try:
        from botocore import exceptions as bx
    except ImportError:  # pragma: no cover - make_api says so before any call
        return None
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {}) if isinstance(exc.response, dict) else {}
        code = str(err.get("Code", "Unknown"))
        msg = str(err.get("Message", "")).splitlines()[0][:200] if err.get("Message") else ""
        op = getattr(exc, "operation_name", "the call")
        if code in THROTTLED:
            return HaError(f"throttled by AWS ({code})", code="throttled")
        if code in DENIED:
            return HaError(f"access denied ({code}): the instance role needs {op_action(op)} "
                           "(see `cgwctl ha check` for the policy)", code="access_denied")
        if code in AUTH:
            return HaError(f"credentials refused ({code}){': ' + msg if msg else ''}", code="credentials")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) if isinstance(exc.response, dict) else 0
        if code in SERVER or (isinstance(status, int) and status >= 500):
            return HaError(f"AWS error {code}", code="server")
        return HaError(f"{code}{': ' + msg if msg else ''}", code=code)
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError,
                        bx.ConnectionClosedError)):
        return HaError(f"EC2 API unreachable ({str(exc).splitlines()[0][:200]})", code="unreachable")
    if isinstance(exc, bx.NoCredentialsError):
        return HaError("no AWS credentials: no instance role and none in the environment", code="credentials")
    if isinstance(exc, bx.BotoCoreError):
        return HaError(f"failed: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}", code="error")
    return None


def op_action(op: str) -> str:
    return f"ec2:{op}" if op and op != "the call" else "the permissions listed"


def _retryable(e: HaError) -> bool:
    return e.code in ("throttled", "unreachable", "server")


@dataclass
class Caller:
    """Calls the API with counted retries; keeps the counts for the report."""

    api: Ec2Api
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    sleep: Callable[[float], None] = time.sleep
    calls: int = 0
    retries: int = 0
    retry_codes: dict[str, int] = field(default_factory=dict)

    def __call__(self, fn: Callable[..., dict], name: str, **kw: Any) -> dict:
        def once() -> dict:
            self.calls += 1
            return fn(**kw)

        def count(err: HaError, _n: int) -> None:
            self.retries += 1
            self.retry_codes[err.code] = self.retry_codes.get(err.code, 0) + 1

        result, _ = with_retries(once, self.policy, what=name, classify=classify_error, retryable=_retryable,
                                 sleep=self.sleep, on_retry=count)
        return result


# ---------------------------------------------------------------------------- takeover

@dataclass
class TakeoverResult:
    ok: bool
    lines: list[str]
    calls: int = 0
    retries: int = 0
    actions: list[RouteAction] = field(default_factory=list)

    @property
    def summary(self) -> str:
        changed = sum(1 for a in self.actions if a.step in (RouteStep.REPLACE, RouteStep.CREATE))
        kept = sum(1 for a in self.actions if a.step == RouteStep.KEEP)
        retr = f", {self.retries} retries" if self.retries else ""
        return f"{changed} routes moved, {kept} already here ({self.calls} API calls{retr})"


def _apply(call: Caller, a: RouteAction, eni: str) -> None:
    args = {"RouteTableId": a.table, _dest_key(a.prefix): a.prefix, "NetworkInterfaceId": eni}
    if a.step == RouteStep.REPLACE:
        try:
            call(call.api.replace_route, "ReplaceRoute", **args)
        except HaError as e:
            if e.code != "InvalidRoute.NotFound":  # gone meanwhile (the peer or an operator): create it
                raise
            call(call.api.create_route, "CreateRoute", **args)
    elif a.step == RouteStep.CREATE:
        try:
            call(call.api.create_route, "CreateRoute", **args)
        except HaError as e:
            if e.code != "RouteAlreadyExists":  # created meanwhile: replace it
                raise
            call(call.api.replace_route, "ReplaceRoute", **args)


def take_over(api: Ec2Api, *, route_tables: tuple[str, ...], prefixes: tuple[str, ...], eni: str,
              elastic_ip: str | None = None, policy: RetryPolicy | None = None,
              sleep: Callable[[float], None] = time.sleep, dry_run: bool = False) -> TakeoverResult:
    """Point ``prefixes`` in ``route_tables`` at ``eni`` (and move the Elastic IP); never
    raises for an API failure: the result says what was done and the first failure."""
    call = Caller(api, policy or RetryPolicy(), sleep)
    lines: list[str] = []
    actions: list[RouteAction] = []
    ok = True
    try:
        described = call(api.describe_route_tables, "DescribeRouteTables", RouteTableIds=list(route_tables))
        actions = plan_routes(described, route_tables, prefixes, eni)
        for a in actions:
            if not dry_run and a.step in (RouteStep.REPLACE, RouteStep.CREATE):
                _apply(call, a, eni)
            lines.append(("would: " if dry_run and a.step in (RouteStep.REPLACE, RouteStep.CREATE) else "")
                         + a.describe(eni))
            if a.step == RouteStep.REFUSE:
                ok = False
        if elastic_ip:
            lines.append(_move_eip(call, elastic_ip, eni, dry_run))
    except HaError as e:
        ok = False
        lines.append(f"error: {e}")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        ok = False
        lines.append(f"error: EC2 gave an answer of an unexpected shape ({type(e).__name__}: {e})")
    return TakeoverResult(ok=ok, lines=lines, calls=call.calls, retries=call.retries, actions=actions)


def _move_eip(call: Caller, allocation: str, eni: str, dry_run: bool) -> str:
    got = call(call.api.describe_addresses, "DescribeAddresses", AllocationIds=[allocation])
    addrs = got.get("Addresses") or []
    if not addrs:
        raise HaError(f"Elastic IP {allocation} not found", code="not_found")
    a = addrs[0]
    ip = a.get("PublicIp", allocation)
    if a.get("NetworkInterfaceId") == eni:
        return f"Elastic IP {ip}: already on {eni}"
    was = a.get("NetworkInterfaceId") or a.get("InstanceId") or "nothing"
    if dry_run:
        return f"would: Elastic IP {ip}: associate -> {eni} (was {was})"
    call(call.api.associate_address, "AssociateAddress", AllocationId=allocation, NetworkInterfaceId=eni,
         AllowReassociation=True)
    return f"Elastic IP {ip}: associate -> {eni} (was {was})"


def source_dest_check(api: Ec2Api, instance_id: str, *, policy: RetryPolicy | None = None,
                      sleep: Callable[[float], None] = time.sleep) -> bool:
    """The instance's source/destination check (True: on, which breaks forwarding)."""
    call = Caller(api, policy or RetryPolicy(), sleep)
    got = call(api.describe_instance_attribute, "DescribeInstanceAttribute", InstanceId=instance_id,
               Attribute="sourceDestCheck")
    v = (got.get("SourceDestCheck") or {}).get("Value")
    if not isinstance(v, bool):
        raise HaError("DescribeInstanceAttribute gave no sourceDestCheck value", code="error")
    return v


def make_api(*, region: str, credentials: Any | None, endpoint_url: str | None, timeout: float) -> Ec2Api:
    """A botocore EC2 client: explicit region, endpoint and credentials (nothing looked up
    behind the caller's back), botocore's own retries off (ours are counted)."""
    try:
        import botocore.config
        import botocore.session
    except ImportError:
        raise HaError("botocore is not installed: pip install 'cgwd[ec2]'", code="config") from None
    session = botocore.session.Session()
    kw: dict[str, Any] = {}
    if credentials is not None:
        kw = {"aws_access_key_id": credentials.access_key, "aws_secret_access_key": credentials.secret_key,
              "aws_session_token": credentials.token}
    cfg = botocore.config.Config(connect_timeout=timeout, read_timeout=timeout,
                                 retries={"total_max_attempts": 1, "mode": "standard"})
    return session.create_client("ec2", region_name=region, endpoint_url=endpoint_url, config=cfg, **kw)
