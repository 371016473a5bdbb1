"""The EC2 takeover: which routes to replace or create (table-driven from
DescribeRouteTables answers), and how API failures are reported: throttling retried and
counted, access denied in one line without a retry, never a traceback."""

from __future__ import annotations

import pytest

from cgwd.ha.ec2 import RouteStep, classify_error, plan_routes, source_dest_check, take_over
from cgwd.ha.retry import HaError, RetryPolicy

botocore = pytest.importorskip("botocore")
from botocore.exceptions import ClientError, EndpointConnectionError  # noqa: E402

ME = "eni-0aaaaaaaaaaaaaaaa"
PEER = "eni-0bbbbbbbbbbbbbbbb"
RTB = "rtb-01111111111111111"
RTB2 = "rtb-02222222222222222"
ONPREM = "10.200.0.0/24"


def rt(rtb, *routes):
    return {"RouteTableId": rtb, "Routes": [
        {"DestinationCidrBlock": "10.0.0.0/16", "GatewayId": "local", "Origin": "CreateRouteTable",
         "State": "active"}, *routes]}


def r(prefix, origin="CreateRoute", state="active", **target):
    key = "DestinationIpv6CidrBlock" if ":" in prefix else "DestinationCidrBlock"
    return {key: prefix, "Origin": origin, "State": state, **target}


PLAN_CASES = [
    ("points at the peer: replace", [rt(RTB, r(ONPREM, NetworkInterfaceId=PEER))], [ONPREM],
     [(RTB, ONPREM, RouteStep.REPLACE, PEER)]),
    ("already here: keep", [rt(RTB, r(ONPREM, NetworkInterfaceId=ME))], [ONPREM],
     [(RTB, ONPREM, RouteStep.KEEP, ME)]),
    ("here but blackhole (interface detached): replace", [rt(RTB, r(ONPREM, state="blackhole", NetworkInterfaceId=ME))],
     [ONPREM], [(RTB, ONPREM, RouteStep.REPLACE, f"{ME} (blackhole)")]),
    ("missing: create", [rt(RTB)], [ONPREM], [(RTB, ONPREM, RouteStep.CREATE, None)]),
    ("only propagated from a VGW: create a static one", [rt(RTB, r(ONPREM, origin="EnableVgwRoutePropagation",
                                                                   GatewayId="vgw-1"))],
     [ONPREM], [(RTB, ONPREM, RouteStep.CREATE, "vgw-1, propagated")]),
    ("an instance target (older API shape): replace", [rt(RTB, r(ONPREM, InstanceId="i-0peer"))], [ONPREM],
     [(RTB, ONPREM, RouteStep.REPLACE, "i-0peer")]),
    ("the VPC's local route: refuse", [rt(RTB)], ["10.0.0.0/16"], [(RTB, "10.0.0.0/16", RouteStep.REFUSE, "local")]),
    ("two tables, two prefixes", [rt(RTB, r(ONPREM, NetworkInterfaceId=PEER)), rt(RTB2, r(ONPREM, NetworkInterfaceId=ME))],
     [ONPREM, "10.201.0.0/24"],
     [(RTB, ONPREM, RouteStep.REPLACE, PEER), (RTB, "10.201.0.0/24", RouteStep.CREATE, None),
      (RTB2, ONPREM, RouteStep.KEEP, ME), (RTB2, "10.201.0.0/24", RouteStep.CREATE, None)]),
    ("IPv6 prefix", [rt(RTB, r("2001:db8:1::/56", NetworkInterfaceId=PEER))], ["2001:db8:1::/56"],
     [(RTB, "2001:db8:1::/56", RouteStep.REPLACE, PEER)]),
    ("a longer prefix is another route", [rt(RTB, r("10.200.0.0/25", NetworkInterfaceId=ME))], [ONPREM],
     [(RTB, ONPREM, RouteStep.CREATE, None)]),
]


@pytest.mark.parametrize(("name", "tables", "prefixes", "want"), PLAN_CASES, ids=[c[0] for c in PLAN_CASES])
def test_plan(name, tables, prefixes, want):
    rtbs = [t["RouteTableId"] for t in tables]
    got = plan_routes({"RouteTables": tables}, rtbs, prefixes, ME)
    assert [(a.table, a.prefix, a.step, a.current) for a in got] == want


def test_plan_missing_table_is_one_clear_error():
    with pytest.raises(HaError, match=f"route table {RTB2} not found"):
        plan_routes({"RouteTables": [rt(RTB)]}, [RTB, RTB2], [ONPREM], ME)


def client_error(code, op, status=400):
    return ClientError({"Error": {"Code": code, "Message": f"{code} happened"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, op)


class FakeEc2:
    """The Ec2Api seam over an in-memory route table; ``fail`` maps an operation to the
    errors it raises first (then it works)."""

    def __init__(self, tables, fail=None, addresses=None, sdc=False):
        self.tables = tables
        self.fail = {k: list(v) for k, v in (fail or {}).items()}
        self.calls: list[tuple[str, dict]] = []
        self.addresses = addresses or []
        self.sdc = sdc

    def _call(self, op, kw):
        self.calls.append((op, kw))
        pending = self.fail.get(op)
        if pending:
            raise pending.pop(0)

    def _routes(self, rtb):
        return next(t for t in self.tables if t["RouteTableId"] == rtb)["Routes"]

    def describe_route_tables(self, **kw):
        self._call("DescribeRouteTables", kw)
        return {"RouteTables": [t for t in self.tables if t["RouteTableId"] in kw["RouteTableIds"]]}

    def replace_route(self, **kw):
        self._call("ReplaceRoute", kw)
        for x in self._routes(kw["RouteTableId"]):
            if x.get("DestinationCidrBlock") == kw["DestinationCidrBlock"]:
                x.clear()
                x.update(r(kw["DestinationCidrBlock"], NetworkInterfaceId=kw["NetworkInterfaceId"]))
                return {}
        raise client_error("InvalidRoute.NotFound", "ReplaceRoute")

    def create_route(self, **kw):
        self._call("CreateRoute", kw)
        self._routes(kw["RouteTableId"]).append(r(kw["DestinationCidrBlock"], NetworkInterfaceId=kw["NetworkInterfaceId"]))
        return {}

    def describe_instance_attribute(self, **kw):
        self._call("DescribeInstanceAttribute", kw)
        return {"InstanceId": kw["InstanceId"], "SourceDestCheck": {"Value": self.sdc}}

    def describe_addresses(self, **kw):
        self._call("DescribeAddresses", kw)
        return {"Addresses": [a for a in self.addresses if a["AllocationId"] in kw["AllocationIds"]]}

    def associate_address(self, **kw):
        self._call("AssociateAddress", kw)
        for a in self.addresses:
            if a["AllocationId"] == kw["AllocationId"]:
                a["NetworkInterfaceId"] = kw["NetworkInterfaceId"]
        return {"AssociationId": "eipassoc-1"}


def ops(api):
    return [op for op, _ in api.calls]


def test_takeover_replaces_and_creates_and_is_idempotent():
    api = FakeEc2([rt(RTB, r(ONPREM, NetworkInterfaceId=PEER))])
    res = take_over(api, route_tables=(RTB,), prefixes=(ONPREM, "10.201.0.0/24"), eni=ME, sleep=lambda s: None)
    assert res.ok, res.lines
    assert ops(api) == ["DescribeRouteTables", "ReplaceRoute", "CreateRoute"]
    assert res.summary == "2 routes moved, 0 already here (3 API calls)"
    again = take_over(api, route_tables=(RTB,), prefixes=(ONPREM, "10.201.0.0/24"), eni=ME, sleep=lambda s: None)
    assert again.ok and again.summary == "0 routes moved, 2 already here (1 API calls)"


def test_dry_run_changes_nothing():
    api = FakeEc2([rt(RTB, r(ONPREM, NetworkInterfaceId=PEER))])
    res = take_over(api, route_tables=(RTB,), prefixes=(ONPREM,), eni=ME, dry_run=True)
    assert ops(api) == ["DescribeRouteTables"]
    assert res.lines == [f"would: {RTB} {ONPREM}: replace -> {ME} (was {PEER})"]


def test_throttling_is_retried_and_counted():
    slept = []
    api = FakeEc2([rt(RTB, r(ONPREM, NetworkInterfaceId=PEER))],
                  fail={"ReplaceRoute": [client_error("RequestLimitExceeded", "ReplaceRoute", 503),
                                         client_error("Throttling", "ReplaceRoute")]})
    res = take_over(api, route_tables=(RTB,), prefixes=(ONPREM,), eni=ME, sleep=slept.append,
                    policy=RetryPolicy(attempts=5, base_delay=0.5))
    assert res.ok and res.retries == 2
    assert slept == [0.5, 1.0]
    assert res.summary == "1 routes moved, 0 already here (4 API calls, 2 retries)"


def test_throttling_that_never_ends_gives_one_line_with_the_count():
    api = FakeEc2([rt(RTB, r(ONPREM, NetworkInterfaceId=PEER))],
                  fail={"ReplaceRoute": [client_error("Throttling", "ReplaceRoute")] * 10})
    res = take_over(api, route_tables=(RTB,), prefixes=(ONPREM,), eni=ME, sleep=lambda s: None,
                    policy=RetryPolicy(attempts=3))
    assert not res.ok
    assert res.lines[-1] == "error: ReplaceRoute: throttled by AWS (Throttling) after 3 attempts"
    assert ops(api).count("ReplaceRoute") == 3


def test_access_denied_is_not_retried():
    api = FakeEc2([rt(RTB, r(ONPREM, NetworkInterfaceId=PEER))],
                  fail={"ReplaceRoute": [client_error("UnauthorizedOperation", "ReplaceRoute", 403)]})
    res = take_over(api, route_tables=(RTB,), prefixes=(ONPREM,), eni=ME, sleep=lambda s: None)
    assert not res.ok and res.retries == 0
    assert res.lines[-1] == ("error: ReplaceRoute: access denied (UnauthorizedOperation): the instance role needs "
                             "ec2:ReplaceRoute (see `cgwctl ha check` for the policy)")
    assert "Traceback" not in "\n".join(res.lines)


def test_route_gone_meanwhile_is_created_and_created_meanwhile_is_replaced():
    api = FakeEc2([rt(RTB, r(ONPREM, NetworkInterfaceId=PEER))],
                  fail={"ReplaceRoute": [client_error("InvalidRoute.NotFound", "ReplaceRoute")]})
    assert take_over(api, route_tables=(RTB,), prefixes=(ONPREM,), eni=ME).ok
    assert ops(api) == ["DescribeRouteTables", "ReplaceRoute", "CreateRoute"]
    api = FakeEc2([rt(RTB, r(ONPREM, NetworkInterfaceId=PEER))])
    api.fail = {"CreateRoute": [client_error("RouteAlreadyExists", "CreateRoute")]}
    res = take_over(api, route_tables=(RTB,), prefixes=("10.201.0.0/24",), eni=ME)
    assert ops(api)[-2:] == ["CreateRoute", "ReplaceRoute"]
    assert not res.ok and res.lines[-1].startswith("error: ReplaceRoute: InvalidRoute.NotFound")


def test_unreachable_endpoint_is_retried_then_one_line():
    err = EndpointConnectionError(endpoint_url="http://127.0.0.1:9/")
    api = FakeEc2([rt(RTB)], fail={"DescribeRouteTables": [err] * 5})
    res = take_over(api, route_tables=(RTB,), prefixes=(ONPREM,), eni=ME, sleep=lambda s: None,
                    policy=RetryPolicy(attempts=2))
    assert res.lines == ['error: DescribeRouteTables: EC2 API unreachable (Could not connect to the endpoint URL: '
                         '"http://127.0.0.1:9/") after 2 attempts']


def test_elastic_ip_moves_once():
    addrs = [{"AllocationId": "eipalloc-0123456789abcdef0", "PublicIp": "198.51.100.77", "NetworkInterfaceId": PEER}]
    api = FakeEc2([rt(RTB, r(ONPREM, NetworkInterfaceId=ME))], addresses=addrs)
    res = take_over(api, route_tables=(RTB,), prefixes=(ONPREM,), eni=ME, elastic_ip="eipalloc-0123456789abcdef0")
    assert res.ok and res.lines[-1] == f"Elastic IP 198.51.100.77: associate -> {ME} (was {PEER})"
    assert api.calls[-1] == ("AssociateAddress", {"AllocationId": "eipalloc-0123456789abcdef0",
                                                  "NetworkInterfaceId": ME, "AllowReassociation": True})
    res = take_over(api, route_tables=(RTB,), prefixes=(ONPREM,), eni=ME, elastic_ip="eipalloc-0123456789abcdef0")
    assert res.lines[-1] == f"Elastic IP 198.51.100.77: already on {ME}"


@pytest.mark.parametrize(("value", "want"), [(True, True), (False, False)])
def test_source_dest_check(value, want):
    assert source_dest_check(FakeEc2([], sdc=value), "i-0123") is want


@pytest.mark.parametrize(("exc", "code"), [
    (client_error("RequestLimitExceeded", "CreateRoute", 503), "throttled"),
    (client_error("AccessDenied", "CreateRoute", 403), "access_denied"),
    (client_error("AuthFailure", "CreateRoute", 401), "credentials"),
    (client_error("InternalError", "CreateRoute", 500), "server"),
    (client_error("InvalidRouteTableID.NotFound", "CreateRoute"), "InvalidRouteTableID.NotFound"),
    (botocore.exceptions.NoCredentialsError(), "credentials"),
    (ValueError("not ours"), None),
])
def test_classify(exc, code):
    got = classify_error(exc)
    assert (got.code if got else None) == code
    if got:
        assert "\n" not in str(got)


def test_make_api_uses_the_configured_endpoint_and_no_botocore_retries():
    from cgwd.ha.ec2 import make_api
    from cgwd.ha.imds import Credentials

    api = make_api(region="eu-west-1", credentials=Credentials("AKIDEXAMPLE", "secret", None, None, "test"),
                   endpoint_url="http://127.0.0.1:5999", timeout=1.0)
    assert api.meta.endpoint_url == "http://127.0.0.1:5999"
    assert api.meta.region_name == "eu-west-1"
    assert api.meta.config.retries["total_max_attempts"] == 1


def test_a_malformed_answer_is_one_line_not_a_traceback():
    class Odd(FakeEc2):
        def describe_route_tables(self, **kw):
            return {"RouteTables": [{"RouteTableId": RTB, "Routes": [{"DestinationCidrBlock": "not-a-cidr"}, 7]}]}

    res = take_over(Odd([rt(RTB)]), route_tables=(RTB,), prefixes=(ONPREM,), eni=ME)
    assert res.ok and res.lines == [f"{RTB} {ONPREM}: create -> {ME}"]

    class Broken(FakeEc2):
        def describe_addresses(self, **kw):
            return {"Addresses": "nonsense"}

    res = take_over(Broken([rt(RTB, r(ONPREM, NetworkInterfaceId=ME))]), route_tables=(RTB,), prefixes=(ONPREM,),
                    eni=ME, elastic_ip="eipalloc-0123456789abcdef0")
    assert not res.ok and res.lines[-1].startswith("error: EC2 gave an answer of an unexpected shape")
