"""Import and export policy of the BGP peering with AWS."""
import pytest
from hypothesis import given, settings, strategies as st

from cgwd.bgp.policy import ExportPolicy, ImportPolicy, check_export_limit
from cgwd.bgp.message import seq

@pytest.mark.parametrize("prefix,ok", [
    ("10.100.0.0/16", True), ("0.0.0.0/0", False), ("169.254.10.0/30", False),
    ("169.254.0.0/16", False), ("192.168.50.0/24", False), ("192.168.50.128/25", False),
    ("192.168.0.0/16", True), ("224.0.0.0/4", False), ("2001:db8::/32", True),
])
def test_aws_default_import(prefix, ok):
    p = ImportPolicy.aws_default(["192.168.50.0/24"])
    assert p.accepts(prefix) is ok
    if not ok:
        assert p.reason(prefix) != "accepted"


def test_one_import_policy_for_config_and_bgp(tmp_path):
    """config.py and the BGP layer share one ImportPolicy: the config's default import is
    aws-default with the advertised prefixes as 'own', and agrees with the RIB on 0/0."""
    import cgwd.config as config
    from cgwd.bgp.routing import RoutingTable
    assert config.ImportPolicy is ImportPolicy
    pol = ImportPolicy("aws-default")
    assert not pol.accepts("0.0.0.0/0")
    assert ImportPolicy("none") == ImportPolicy("deny") and ImportPolicy("none").to_config() == "none"
    lst = ImportPolicy.from_config(["10.0.0.0/8"], ["10.9.0.0/16"])
    assert lst.mode == "prefix-list" and lst.to_config() == ["10.0.0.0/8"]
    assert lst.accepts("10.1.0.0/16") and not lst.accepts("10.9.1.0/24") and not lst.accepts("0.0.0.0/0")
    assert pol.with_own(["192.168.50.0/24"]) == ImportPolicy("aws-default", ("192.168.50.0/24",))
    assert hash(pol.with_own(["192.168.50.0/24"])) == hash(ImportPolicy.aws_default(["192.168.50.0/24"]))
    with pytest.raises(ValueError):
        ImportPolicy("all")
    # RFC 8212: no policy given to the BGP layer -> nothing imported
    assert RoutingTable(import_policy=None).import_policy.mode == "deny"




def test_export_policy_and_limit():
    exp = ExportPolicy(("192.168.50.0/24", "192.168.51.0/24"), default_route=True, prepend=2, med=50)
    rs = exp.routes(65000)
    assert [r.prefix for r in rs] == ["192.168.50.0/24", "192.168.51.0/24", "0.0.0.0/0"]
    assert rs[0].as_path == seq(65000, 65000) and rs[0].med == 50
    check_export_limit([f"10.0.{i}.0/24" for i in range(100)])
    with pytest.raises(ValueError, match="101 prefixes.*limit is 100"):
        check_export_limit([f"10.0.{i}.0/24" for i in range(101)])
    check_export_limit([f"10.0.{i}.0/24" for i in range(101)], limit=1000)




@settings(max_examples=500, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 32),
       st.sampled_from(["aws-default", "prefix-list", "any"]))
def test_policy_ipv4_fast_path_matches_ipaddress(addr, plen, mode):
    import ipaddress
    p = str(ipaddress.ip_network((addr, plen), strict=False))
    kw = dict(own_prefixes=("192.168.50.0/24", "10.0.0.0/8"), allow=("172.16.0.0/12", "10.0.0.0/8"),
              deny=("10.1.0.0/16",) if mode == "any" else ())
    fast = ImportPolicy(mode, **kw)
    slow = ImportPolicy(mode, **kw)
    object.__setattr__(slow, "_decide_v4", lambda _p: None)   # ImportPolicy is frozen
    assert fast._decide(p) == slow._decide(p)


def test_config_export_limit_counts_the_default_route():
    """At most 100 prefixes to a VGW, checked at config time; advertise_default is one more."""
    from unit_config import BASE
    from cgwd.config import ConfigError, parse_config
    many = ", ".join(f'"10.{i}.0.0/16"' for i in range(100))
    text = BASE.replace('advertise = ["10.200.0.0/24"]', f"advertise = [{many}]")
    assert len(parse_config(text).vpns[0].advertise) == 100
    with pytest.raises(ConfigError, match="advertise_default.*101 prefixes"):
        parse_config(text.replace("remote_asn = 64512", "remote_asn = 64512\nadvertise_default = true"))
    many101 = ", ".join(f'"10.{i}.0.0/16"' for i in range(101))
    with pytest.raises(ConfigError, match="101 prefixes, more than max_advertise = 100"):
        parse_config(BASE.replace('advertise = ["10.200.0.0/24"]', f"advertise = [{many101}]"))
