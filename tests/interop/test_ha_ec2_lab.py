"""The EC2 route-table takeover (seed 004 as a feature) against an EC2 API emulator.

The emulator is **moto's server mode** (pip ``moto[server]``), which this test runs itself
on the lab's LAN (``10.200.0.254:5000`` inside a network namespace the test creates); each
box gets an **IMDSv2 responder** the test runs at 169.254.169.254 inside the box's
namespace, telling it its instance id, interface and role credentials (the emulator's,
worth nothing elsewhere). keepalived's notify hooks run ``cgwctl ha notify``: the MASTER
points the VPC route table's entries at its own interface (CreateRoute, ReplaceRoute) and
moves the Elastic IP.

Never real AWS: every HA file must name the emulator's endpoint (checked before anything
runs: the test fails closed otherwise), the hooks run without the caller's AWS_* variables
or config files, and the namespaces have no route to anything but the lab.

Scenario (``failback = "preempt"``): box 1 is MASTER and the routes point at its
interface; its tunnels die (WAN cut, cgwd keeps running, health says down) -> box 2 takes
the role and the routes point at box 2's interface; box 1's tunnels return -> after the
preempt delay box 1 takes the role back and the routes point at box 1 again.
"""

from __future__ import annotations

import ipaddress
import os
import time
import tomllib
import urllib.parse

import pytest

from cgwd.lab.cli import cgwctl_command
from cgwd.lab.netns import wait_for
from cgwd.lab.pair import in_netns

from test_ha_keepalived import healthy, pair_factory, start_pair  # noqa: F401 - the fixture

pytestmark = pytest.mark.interop

botocore_session = pytest.importorskip("botocore.session")
pytest.importorskip("moto.server")

REGION = "ap-northeast-1"
CREDS = {"AccessKeyId": "ASIAEMULATOR0000TEST", "SecretAccessKey": "emulator-only", "Token": "emulator"}
ONPREM = "10.200.0.0/24"
OTHER = "10.201.0.0/24"


def ec2_client(lab):
    session = botocore_session.Session()
    return session.create_client("ec2", region_name=REGION, endpoint_url=lab.api_url,
                                 aws_access_key_id=CREDS["AccessKeyId"], aws_secret_access_key=CREDS["SecretAccessKey"])


class Emulator:
    """Calls to moto from the test, made inside the LAN namespace where it listens."""

    def __init__(self, lab):
        self.lab = lab

    def call(self, op: str, **kw):
        with in_netns(self.lab.lan):
            client = ec2_client(self.lab)
            try:
                return getattr(client, op)(**kw)
            finally:
                client.close()

    def targets(self, rtb: str) -> dict[str, str | None]:
        got = self.call("describe_route_tables", RouteTableIds=[rtb])["RouteTables"][0]["Routes"]
        return {r["DestinationCidrBlock"]: r.get("NetworkInterfaceId") for r in got if "DestinationCidrBlock" in r}

    def eip_on(self, alloc: str) -> str | None:
        return self.call("describe_addresses", AllocationIds=[alloc])["Addresses"][0].get("NetworkInterfaceId")


def assert_emulator_only(lab, path: str) -> None:
    with open(path, "rb") as f:
        ec2 = tomllib.load(f)["ha"]["ec2"]
    url = urllib.parse.urlsplit(ec2.get("endpoint_url", ""))
    if url.geturl() != lab.api_url or ipaddress.ip_address(url.hostname) not in ipaddress.ip_network(lab.spec.onprem_cidr):
        pytest.fail(f"{path}: endpoint_url {ec2.get('endpoint_url')!r} is not the lab's emulator: refusing to run")
    if ec2.get("imds_url", "http://169.254.169.254") != "http://169.254.169.254":
        pytest.fail(f"{path}: imds_url is not the box's own responder")


def wait_routes(emu, rtb, eni, what, timeout=120):
    wait_for(lambda: emu.targets(rtb).get(ONPREM) == eni and emu.targets(rtb).get(OTHER) == eni, timeout,
             interval=0.5, what=what)


def test_route_tables_follow_the_active_box_and_fail_back(pair_factory):
    lab = pair_factory(failback="preempt")
    b1, b2 = lab.boxes
    lab.start_moto()
    emu = Emulator(lab)
    wait_for(lambda: emu.call("describe_regions") is not None, 60, interval=0.5, what="moto answering")
    vpc = emu.call("create_vpc", CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = emu.call("create_subnet", VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    images = emu.call("describe_images", Owners=["amazon"]).get("Images") or [{"ImageId": "ami-12c6146b"}]
    run = emu.call("run_instances", ImageId=images[0]["ImageId"], MinCount=2, MaxCount=2, InstanceType="t3.micro",
                   SubnetId=subnet)["Instances"]
    enis = [i["NetworkInterfaces"][0] for i in run]
    rtb = emu.call("create_route_table", VpcId=vpc)["RouteTable"]["RouteTableId"]
    emu.call("create_route", RouteTableId=rtb, DestinationCidrBlock=OTHER,
             NetworkInterfaceId=enis[1]["NetworkInterfaceId"])
    alloc = emu.call("allocate_address", Domain="vpc")["AllocationId"]
    emu.call("associate_address", AllocationId=alloc, NetworkInterfaceId=enis[1]["NetworkInterfaceId"])
    emu.call("modify_instance_attribute", InstanceId=run[0]["InstanceId"], SourceDestCheck={"Value": False})
    eni1, eni2 = (e["NetworkInterfaceId"] for e in enis)

    for b, inst, eni in zip(lab.boxes, run, enis):
        lab.start_imds(b, {"region": REGION, "instance_id": inst["InstanceId"], "mac": eni["MacAddress"],
                           "interface_id": eni["NetworkInterfaceId"], "role": "cgwd-ha", "credentials": CREDS})
        path = lab.write_ha_config(b, ec2={"route_tables": [rtb], "prefixes": [ONPREM, OTHER], "elastic_ip": alloc,
                                           "endpoint_url": lab.api_url, "timeout": 3.0, "attempts": 3})
        assert_emulator_only(lab, path)

    start_pair(lab)
    wait_routes(emu, rtb, eni1, "the routes on box 1's interface")
    assert emu.eip_on(alloc) == eni1
    master = lab.ha_state(b1)
    assert master["ok"] and any("2 routes moved" in line for line in master["actions"]), master
    print("\nbox 1 MASTER: " + "; ".join(master["actions"]))

    # cgwctl ha check: box 1's source/dest check is off, box 2's still on (a problem)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    chk1 = b1.ns.run(cgwctl_command("ha", "--config", b1.ha_config, "check"), check=False, timeout=60, env=env)
    chk2 = b2.ns.run(cgwctl_command("ha", "--config", b2.ha_config, "check"), check=False, timeout=60, env=env)
    assert chk1.returncode == 0 and "source/destination check of" in chk1.stdout and "off (good)" in chk1.stdout, chk1.stdout
    assert chk2.returncode == 1 and "source/destination check of" in chk2.stdout and "is ON" in chk2.stdout, chk2.stdout
    assert f"ec2: API endpoint {lab.api_url}" in chk1.stdout

    # box 1's tunnels die (its WAN link cut; cgwd and keepalived keep running)
    t_cut = time.time()
    lab.cut_wan(b1)
    wait_for(lambda: lab.vip_on() == [2], 120, interval=0.2, what="box 2 MASTER")
    t_master = time.time()
    wait_routes(emu, rtb, eni2, "the routes on box 2's interface")
    t_moved = time.time()
    assert emu.eip_on(alloc) == eni2
    assert lab.vip_on() == [2]
    print(f"box 1's tunnels cut: box 2 MASTER after {t_master - t_cut:.1f} s, routes and Elastic IP on box 2 "
          f"after {t_moved - t_cut:.1f} s (box 1 health: {lab.health(b1)[1]})")

    # box 1's tunnels return: failback = preempt gives it the role back after the delay
    t_back = time.time()
    lab.cut_wan(b1, up=True)
    wait_for(lambda: healthy(lab, b1), 90, interval=0.5, what="box 1's tunnels up again")
    wait_routes(emu, rtb, eni1, "the routes back on box 1's interface")
    assert emu.eip_on(alloc) == eni1
    assert lab.vip_on() == [1]
    print(f"box 1's tunnels back: routes failed back to box 1 after {time.time() - t_back:.1f} s "
          f"(preempt_delay {lab.pair.preempt_delay} s)")
