"""[[lan_neighbor]]: every bad value a clear, specific error; the import filter's ge/le rules."""
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cgwd.config import ConfigError, parse_config
from cgwd.lan.config import ImportFilter, PrefixRule
from unit_config import BASE

GOOD = """
[[lan_neighbor]]
name = "core1"
address = "10.200.0.10"
local_address = "10.200.0.1"
remote_asn = 4200000001
import = ["10.50.0.0/16 le 24", "192.168.10.0/24"]
"""


def neighbor(**kw) -> str:
    d = {"address": '"10.200.0.10"', "local_address": '"10.200.0.1"', "remote_asn": "65010",
         "import": '["10.50.0.0/16 le 24"]'}
    d.update(kw)
    body = "".join(f"{k} = {v}\n" for k, v in d.items() if v is not None)
    return BASE + "\n[[lan_neighbor]]\n" + body


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    return [str(i) for i in e.value.errors]


def test_a_good_neighbor_parses_with_the_vpns_asn_and_every_vpn():
    cfg = parse_config(BASE + GOOD)
    (n,) = cfg.lan_neighbors
    assert n.name == "core1" and n.remote_asn == 4200000001 and n.local_asn == 65000
    assert n.vpns == ("vpn-0123456789abcdef0",) and not n.ibgp and n.hold_time == 90
    assert n.import_filter.to_config() == ["10.50.0.0/16 le 24", "192.168.10.0/24"]
    assert n.password == b""


def test_ibgp_and_password_are_taken_and_the_password_is_never_in_repr():
    cfg = parse_config(neighbor(remote_asn="65000", password='"s3cret-Key"'))
    (n,) = cfg.lan_neighbors
    assert n.ibgp and n.password == b"s3cret-Key" and "s3cret" not in repr(cfg)


def test_prepend_and_med_default_to_none_and_are_taken():
    (n,) = parse_config(neighbor()).lan_neighbors
    assert (n.prepend, n.med) == (0, None)
    (n,) = parse_config(neighbor(prepend="2", med="50")).lan_neighbors
    assert (n.prepend, n.med) == (2, 50)
    (n,) = parse_config(neighbor(remote_asn="65000", med="0")).lan_neighbors
    assert n.ibgp and (n.prepend, n.med) == (0, 0), "MED on iBGP is fine"


def test_password_file_is_read(tmp_path):
    p = tmp_path / "md5.key"
    p.write_text("from-a-file\n")
    (n,) = parse_config(neighbor(password_file=f'"{p}"')).lan_neighbors
    assert n.password == b"from-a-file" and n.password_source == str(p)


@pytest.mark.parametrize("kw, key, words", [
    ({"address": None}, "address", "missing"),
    ({"local_address": None}, "local_address", "missing"),
    ({"remote_asn": None}, "remote_asn", "missing"),
    ({"import": None}, "import", "missing: the import filter"),
    ({"address": '"10.200.0.300"'}, "address", "not an IP address"),
    ({"address": '"127.0.0.1"'}, "address", "not a unicast address"),
    ({"address": '"10.200.0.1"'}, "local_address", "equals address"),
    ({"local_address": '"fd00::1"'}, "local_address", "is IPv6"),
    ({"remote_asn": "0"}, "remote_asn", "between 1 and 4294967295"),
    ({"remote_asn": "4294967296"}, "remote_asn", "between 1 and 4294967295"),
    ({"local_asn": "-1"}, "local_asn", "between 1 and 4294967295"),
    ({"hold_time": "2"}, "hold_time", "0 (no keepalives) or 3-65535"),
    ({"hold_time": "70000"}, "hold_time", "between 0 and 65535"),
    ({"passive": '"yes"'}, "passive", "true or false"),
    ({"vpns": '["nope"]'}, "vpns", "'nope' is not a [[vpn]]"),
    ({"import": '"10.0.0.0/8"'}, "import", "must be a list"),
    ({"import": '["10.0.0.1/8"]'}, "import", "host bits set"),
    ({"import": '["10.0.0.0/8 le 33"]'}, "import", "le 33 must be between the prefix length 8 and 32"),
    ({"import": '["10.0.0.0/16 ge 8"]'}, "import", "ge 8 must be between"),
    ({"import": '["10.0.0.0/8 ge 24 le 16"]'}, "import", "ge 24 is greater than le 16"),
    ({"import": '["10.0.0.0/8 le 16 le 20"]'}, "import", "le given twice"),
    ({"import": '["10.0.0.0/8 upto 16"]'}, "import", "must look like"),
    ({"import": '["10.0.0.0/8", "10.0.0.0/8"]'}, "import", "same rule twice"),
    ({"password": '""'}, "password", "is empty"),
    ({"password": '"' + "x" * 81 + '"'}, "password", "at most 80"),
    ({"password": '"a"', "password_file": '"/x"'}, "password", "not both"),
    ({"password_file": '"/nonexistent/key"'}, "password_file", "cannot read"),
    ({"colour": '"red"'}, "colour", "unknown key"),
    ({"max_prefix": "0"}, "max_prefix", "between 1 and 1000000"),
    ({"summarise": '["10.0.0.0/8", "10.1.0.0/16"]'}, "summarise", "overlap"),
    ({"summarise": '["0.0.0.0/0"]'}, "summarise", "cannot be sent to AWS"),
    ({"summarise": '["10.0.0.1/8"]'}, "summarise", "host bits set"),
    ({"summarise": '[8]'}, "summarise", "must be a list of prefixes"),
    ({"prepend": "11"}, "prepend", "between 0 and 10"),
    ({"prepend": "-1"}, "prepend", "between 0 and 10"),
    ({"prepend": '"2"'}, "prepend", "must be an integer"),
    ({"prepend": "true"}, "prepend", "must be an integer"),
    ({"prepend": "2", "remote_asn": "65000"}, "prepend", "iBGP session"),
    ({"med": "-1"}, "med", "between 0 and 4294967295"),
    ({"med": "4294967296"}, "med", "between 0 and 4294967295"),
    ({"med": "1.5"}, "med", "must be an integer"),
])
def test_every_bad_value_is_a_specific_error(kw, key, words):
    errs = errors(neighbor(**kw))
    assert any(f"lan_neighbor[0]" in e and key in e and words in e for e in errs), errs


def test_two_neighbors_with_one_address_or_name_are_errors():
    two = neighbor() + "\n[[lan_neighbor]]\nname = \"lan0\"\naddress = \"10.200.0.10\"\n" \
        "local_address = \"10.200.0.1\"\nremote_asn = 65011\nimport = []\n"
    errs = errors(two)
    assert any("lan_neighbor[1]" in e and "another [[lan_neighbor]]'s address" in e for e in errs), errs
    assert any("lan_neighbor[1]" in e and "names another" in e for e in errs), errs


SECOND_VPN = """
[[vpn]]
name = "vpn-b"
local_address = "203.0.113.2"
local_asn = 65001
remote_asn = 64512

  [[vpn.tunnel]]
  name = "tun3"
  remote_address = "198.51.100.12"
  psk = "Zq7.Tx2_Vb9Lm4Np8Rs3Wz6Yc1Df5Gh0"
  inside_cidr = "169.254.12.0/30"
"""


def test_local_asn_must_be_given_when_the_served_vpns_disagree():
    errs = errors(BASE + SECOND_VPN + GOOD)
    assert any("local_asn" in e and "65000, 65001" in e for e in errs), errs
    ok = parse_config(BASE + SECOND_VPN + GOOD.replace("remote_asn", "local_asn = 65001\nremote_asn"))
    assert ok.lan_neighbors[0].local_asn == 65001
    one = parse_config(BASE + SECOND_VPN + GOOD.replace("remote_asn", 'vpns = ["vpn-b"]\nremote_asn'))
    assert one.lan_neighbors[0].local_asn == 65001 and one.lan_neighbors[0].vpns == ("vpn-b",)


@pytest.mark.parametrize("rule, prefix, ok", [
    ("10.0.0.0/8", "10.0.0.0/8", True),
    ("10.0.0.0/8", "10.1.0.0/16", False),
    ("10.0.0.0/8 le 24", "10.1.2.0/24", True),
    ("10.0.0.0/8 le 24", "10.1.2.0/25", False),
    ("10.0.0.0/8 le 24", "11.0.0.0/8", False),
    ("10.0.0.0/8 ge 16", "10.0.0.0/8", False),
    ("10.0.0.0/8 ge 16", "10.9.9.9/32", True),
    ("10.0.0.0/8 ge 16 le 20", "10.16.0.0/20", True),
    ("10.0.0.0/8 ge 16 le 20", "10.16.0.0/21", False),
    ("2001:db8::/32 le 48", "2001:db8:1::/48", True),
    ("2001:db8::/32 le 48", "10.0.0.0/8", False),
    ("0.0.0.0/0 le 32", "0.0.0.0/0", False),
    ("0.0.0.0/0", "0.0.0.0/0", True),
    ("0.0.0.0/0 le 32", "169.254.1.0/24", False),
    ("0.0.0.0/0 le 32", "224.1.0.0/16", False),
])
def test_import_filter_table(rule, prefix, ok):
    """No ge/le: the exact prefix only; the default route needs an exact rule; link-local and
    multicast space never pass."""
    assert ImportFilter((PrefixRule.parse(rule),)).accepts(prefix) is ok


@given(st.integers(0, 2**32 - 1), st.integers(0, 32), st.integers(0, 2**32 - 1), st.integers(8, 24),
       st.integers(0, 8), st.integers(0, 8))
def test_a_rule_matches_exactly_the_prefixes_inside_it_with_a_length_in_range(a, alen, r, rlen, dge, dle):
    net = ipaddress.ip_network((a, alen), strict=False)
    base = ipaddress.ip_network((r, rlen), strict=False)
    ge, le = rlen + dge, min(32, rlen + dge + dle)
    rule = PrefixRule.parse(f"{base} ge {ge} le {le}")
    want = ge <= net.prefixlen <= le and int(net.network_address) >> (32 - rlen) == int(base.network_address) >> (32 - rlen)
    assert rule.matches(net) is want


def test_the_example_config_shows_every_lan_key():
    import os
    import re

    from cgwd.lan.config import LAN_KEYS
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    text = open(os.path.join(root, "examples", "cgwd.toml")).read()
    block = text[text.index("# [[lan_neighbor]]"):]
    shown = set(re.findall(r"^#\s*([a-z_]+)\s*=", block, re.M)) | set(re.findall(r"or: ([a-z_]+) =", block))
    assert sorted(LAN_KEYS - shown) == []
