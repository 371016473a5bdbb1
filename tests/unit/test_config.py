import re
import os
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from cgwd.config import ConfigError, load_config, parse_config, parse_proposal
from unit_config import BASE, PSK1, PSK2

T1 = '  inside_cidr = "169.254.10.0/30"\n'
VPN = 'advertise = ["10.200.0.0/24"]\n'


def bad(*pairs):
    text = BASE
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


# (id, config text, table, key, words the message must contain)
CASES = [
    ("unknown key with hint", bad((T1, T1 + "  esp_lifetme = 900\n")), "vpn[0].tunnel[0]", "esp_lifetme", "did you mean 'esp_lifetime'"),
    ("unknown daemon key", bad(('log_level = "info"', 'log_levl = "info"')), "daemon", "log_levl", "did you mean 'log_level'"),
    ("unknown top-level table", BASE + "\n[deamon]\n", "", "deamon", "unknown key"),
    ("bad proposal", bad((T1, T1 + '  esp_proposals = ["aes128-md5-modp1024"]\n')), "vpn[0].tunnel[0]", "esp_proposals", "missing integrity"),
    ("unknown cipher", bad((T1, T1 + '  ike_proposals = ["3des-sha1-modp1024"]\n')), "vpn[0].tunnel[0]", "ike_proposals", "unknown encryption"),
    ("GCM in IKE", bad((T1, T1 + '  ike_proposals = ["aes128gcm16-modp2048"]\n')), "vpn[0].tunnel[0]", "ike_proposals", "GCM is not allowed in IKEv1 phase 1"),
    ("GCM with integrity", bad((T1, T1 + '  esp_proposals = ["aes256gcm16-sha256-modp2048"]\n')), "vpn[0].tunnel[0]", "esp_proposals", "leave out the integrity"),
    ("bad DH group for IKE", bad((T1, T1 + '  ike_proposals = ["aes128-sha1-modp1536"]\n')), "vpn[0].tunnel[0]", "ike_proposals", "DH group 5 (modp1536) is not allowed"),
    ("unknown DH group", bad((T1, T1 + '  esp_proposals = ["aes128-sha1-modp768"]\n')), "vpn[0].tunnel[0]", "esp_proposals", "unknown DH group"),
    ("IKE without DH", bad((T1, T1 + '  ike_proposals = ["aes128-sha1"]\n')), "vpn[0].tunnel[0]", "ike_proposals", "needs a DH group"),
    ("IKE lifetime too long", bad((T1, T1 + "  ike_lifetime = 86400\n")), "vpn[0].tunnel[0]", "ike_lifetime", "between 900 and 28800"),
    ("ESP lifetime too short", bad((T1, T1 + "  esp_lifetime = 300\n")), "vpn[0].tunnel[0]", "esp_lifetime", "between 900 and 3600"),
    ("rekey margin > half", bad((T1, T1 + "  esp_lifetime = 900\n  rekey_margin = 540\n")), "vpn[0].tunnel[0]", "rekey_margin", "half the ESP lifetime (450 s"),
    ("rekey fuzz", bad((T1, T1 + "  rekey_fuzz = 150\n")), "vpn[0].tunnel[0]", "rekey_fuzz", "between 0 and 100"),
    ("dpd interval 0", bad((T1, T1 + "  dpd_interval = 0\n")), "vpn[0].tunnel[0]", "dpd_interval", "between 1 and"),
    ("replay window", bad((T1, T1 + "  replay_window = 4096\n")), "vpn[0].tunnel[0]", "replay_window", "between 64 and 2048"),
    ("bad dpd action", bad((T1, T1 + '  dpd_action = "restrat"\n')), "vpn[0].tunnel[0]", "dpd_action", "did you mean 'restart'"),
    ("int given as string", bad((T1, T1 + '  hold_time = "30"\n')), "vpn[0].tunnel[0]", "hold_time", "must be an integer, not a string"),
    ("bool is not int", bad((T1, T1 + "  prepend = true\n")), "vpn[0].tunnel[0]", "prepend", "must be an integer"),
    ("overlapping inside CIDRs", bad(('"169.254.11.0/30"', '"169.254.10.0/30"')), "vpn[0].tunnel[1]", "inside_cidr", "overlaps 169.254.10.0/30 of vpn[0].tunnel[0]"),
    ("duplicate tunnel names", bad(('name = "tun2"', 'name = "tun1"')), "vpn[0].tunnel[1]", "name", "duplicate tunnel name 'tun1'"),
    ("reserved inside CIDR", bad(('"169.254.10.0/30"', '"169.254.5.0/30"')), "vpn[0].tunnel[0]", "inside_cidr", "reserved by AWS"),
    ("reserved 169.254.169.252", bad(('"169.254.10.0/30"', '"169.254.169.252/30"')), "vpn[0].tunnel[0]", "inside_cidr", "reserved by AWS"),
    ("inside not /30", bad(('"169.254.10.0/30"', '"169.254.10.0/29"')), "vpn[0].tunnel[0]", "inside_cidr", "must be a /30"),
    ("inside outside link-local", bad(('"169.254.10.0/30"', '"10.0.0.0/30"')), "vpn[0].tunnel[0]", "inside_cidr", "not inside 169.254.0.0/16"),
    ("inside host bits", bad(('"169.254.10.0/30"', '"169.254.10.2/30"')), "vpn[0].tunnel[0]", "inside_cidr", "did you mean '169.254.10.0/30'"),
    ("too many advertised prefixes", bad((VPN, "advertise = [" + ", ".join(f'"10.{i // 256}.{i % 256}.0/24"' for i in range(101)) + "]\n")), "vpn[0]", "advertise", "101 prefixes, more than max_advertise = 100"),
    ("max_advertise above VGW limit", bad((VPN, VPN + "max_advertise = 500\n")), "vpn[0]", "max_advertise", "at most 100"),
    ("PSK bad chars", bad((PSK1, "bad-psk!with$chars")), "vpn[0].tunnel[0]", "psk", "must be 8-64 characters of [A-Za-z0-9._]"),
    ("PSK too short", bad((PSK1, "short")), "vpn[0].tunnel[0]", "psk", "8-64 characters"),
    ("PSK starts with 0", bad((PSK1, "0abcdefgh123")), "vpn[0].tunnel[0]", "psk", "must not start with 0"),
    ("psk and psk_file", bad((T1, T1 + '  psk_file = "/etc/cgwd/tun1.psk"\n')), "vpn[0].tunnel[0]", "psk", "either psk or psk_file, not both"),
    ("missing psk_file", bad((f'  psk = "{PSK1}"\n', '  psk_file = "/nonexistent/tun1.psk"\n')), "vpn[0].tunnel[0]", "psk_file", "/nonexistent/tun1.psk: no such file"),
    ("no psk at all", bad((f'  psk = "{PSK1}"\n', "")), "vpn[0].tunnel[0]", "psk", "missing"),
    ("ifname too long", bad(('name = "tun1"', 'name = "tunnel-one-abc"')), "vpn[0].tunnel[0]", "name", "'cgw-tunnel-one-abc' has 18 characters, Linux allows 15"),
    ("bad tunnel name chars", bad(('name = "tun1"', 'name = "tun 1"')), "vpn[0].tunnel[0]", "name", "letters, digits"),
    ("missing remote_address", bad(('  remote_address = "198.51.100.2"\n', "")), "vpn[0].tunnel[0]", "remote_address", "missing"),
    ("bad remote address", bad(('"198.51.100.2"', '"198.51.100.300"')), "vpn[0].tunnel[0]", "remote_address", "not an IPv4 address"),
    ("same ASN both sides", bad(("remote_asn = 64512", "remote_asn = 65000")), "vpn[0]", "local_asn", "ASNs must differ"),
    ("ASN out of range", bad(("local_asn = 65000", "local_asn = 4294967296")), "vpn[0]", "local_asn", "between 1 and 4294967295"),
    ("mss larger than mtu allows", bad((T1, T1 + "  mtu = 1400\n  mss = 1379\n")), "vpn[0].tunnel[0]", "mss", "at most mtu - 40 = 1360"),
    ("bad gateway type", bad((VPN, VPN + 'gateway_type = "tgwx"\n')), "vpn[0]", "gateway_type", "did you mean 'tgw'"),
    ("bad import", bad((VPN, VPN + 'import = "all"\n')), "vpn[0]", "import", "aws-default"),
    ("inside_cidr at VPN level", bad((VPN, VPN + 'inside_cidr = "169.254.12.0/30"\n')), "vpn[0]", "inside_cidr", "must be set in each [[vpn.tunnel]]"),
    ("three tunnels", BASE + '\n  [[vpn.tunnel]]\n  name = "tun3"\n  remote_address = "198.51.100.4"\n  psk = "abcdefgh123"\n  inside_cidr = "169.254.12.0/30"\n', "vpn[0]", "tunnel", "exactly two"),
    ("missing local_address", bad(('local_address = "203.0.113.2"\n', "")), "vpn[0]", "local_address", "missing"),
    ("relative socket path", bad(('log_level = "info"', 'socket = "cgwd.sock"')), "daemon", "socket", "absolute path"),
    ("bad metrics listen", bad(('log_level = "info"', 'metrics_listen = "9474"')), "daemon", "metrics_listen", "127.0.0.1:9474"),
    ("bad log level", bad(('log_level = "info"', 'log_level = "verbose"')), "daemon", "log_level", "debug, info, warning, error"),
    ("not TOML", BASE + "\nthis is = = not toml\n", "", "", "not valid TOML"),
]


@pytest.mark.parametrize("name,text,table,key,words", CASES, ids=[c[0] for c in CASES])
def test_bad_config(name, text, table, key, words, write_cfg):
    path = write_cfg(text)
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    issues = ei.value.errors
    match = [i for i in issues if i.table == table and i.key == key and words in i.message]
    assert match, f"expected {table}/{key}: {words!r}; got:\n" + "\n".join(map(str, issues))
    assert all(i.file == path for i in issues)
    for i in issues:  # a PSK is never printed back
        for secret in (PSK1, PSK2, "bad-psk!with$chars", "0abcdefgh123"):
            assert secret not in str(i)
    assert PSK1 not in str(ei.value) and PSK2 not in str(ei.value)


def test_case_count():
    assert len(CASES) >= 25


def test_all_errors_at_once(write_cfg):
    text = bad((T1, T1 + "  esp_lifetme = 900\n  ike_lifetime = 1\n"), ('name = "tun2"', 'name = "tun1"'), ("local_asn = 65000", "local_asn = -1"))
    with pytest.raises(ConfigError) as ei:
        load_config(write_cfg(text))
    keys = {(i.table, i.key) for i in ei.value.errors}
    assert {("vpn[0].tunnel[0]", "esp_lifetme"), ("vpn[0].tunnel[0]", "ike_lifetime"), ("vpn[0].tunnel[1]", "name"), ("vpn[0]", "local_asn")} <= keys


def test_valid_defaults_and_inheritance(write_cfg):
    text = bad((VPN, VPN + "esp_lifetime = 900\nrekey_margin = 120\n"), (T1, T1 + "  esp_lifetime = 1800\n  med = 50\n"))
    cfg = load_config(write_cfg(text))
    assert cfg.warnings == []
    assert len(cfg.vpns) == 1 and [t.name for t in cfg.tunnels] == ["tun1", "tun2"]
    t1, t2 = cfg.tunnels
    assert t1.esp_lifetime == 1800 and t2.esp_lifetime == 900 and t2.rekey_margin == 120
    assert t1.med == 50 and t2.med is None
    assert t1.ifname == "cgw-tun1"
    assert t1.inside_cidr == IPv4Network("169.254.10.0/30")
    assert t1.inside_local == IPv4Interface("169.254.10.2/30") and t1.inside_remote == IPv4Address("169.254.10.1")
    assert t1.local_address == t1.public_address == IPv4Address("203.0.113.2")
    assert t1.local_id == "203.0.113.2" and t1.remote_id == "198.51.100.2"
    assert t1.psk == PSK1.encode()
    assert t1.ike_proposals == ("aes128-sha1-modp1024",) and t1.ike_lifetime == 28800
    # MTU and MSS unset: the data path follows the negotiated transform
    assert (t1.replay_window, t1.rekey_fuzz, t1.dpd_interval, t1.dpd_retries, t1.hold_time, t1.mtu, t1.mss) == (1024, 100, 10, 3, 30, None, None)
    assert t1.advertise == (IPv4Network("10.200.0.0/24"),) and t1.local_asn == 65000 and t1.remote_asn == 64512
    assert t1.gateway_type == "vgw" and t1.ecmp is False and t1.max_prefix == 1000 and t1.max_advertise == 100
    assert t1.import_policy.accepts("10.0.0.0/16") and not t1.import_policy.accepts("169.254.0.0/24")
    # issue 5: the default import refuses the default route and our own (advertised) prefixes
    assert not t1.import_policy.accepts("0.0.0.0/0") and not t1.import_policy.accepts("10.200.0.0/24")
    assert not t1.import_policy.accepts("10.200.0.128/25")
    assert t1.datapath == "auto" and t1.enabled
    assert PSK1 not in repr(t1) and PSK1 not in str(cfg)


def test_tgw_defaults_and_behind_nat(write_cfg):
    text = bad((VPN, VPN + 'gateway_type = "tgw"\npublic_address = "198.51.100.77"\nimport = ["10.0.0.0/8"]\n'),
               ('local_address = "203.0.113.2"', 'local_address = "192.168.1.10"'))
    t = load_config(write_cfg(text)).tunnels[0]
    assert t.ecmp is True and t.max_prefix == 5000 and t.max_advertise == 1000
    assert str(t.local_address) == "192.168.1.10" and t.local_id == "198.51.100.77"
    assert t.import_policy.accepts("10.1.0.0/16") and not t.import_policy.accepts("172.16.0.0/12")
    assert t.import_policy.mode == "prefix-list" and not t.import_policy.accepts("0.0.0.0/0")


def test_psk_file(tmp_path, write_cfg):
    pf = tmp_path / "tun1.psk"
    pf.write_text(PSK1 + "\n")
    os.chmod(pf, 0o600)
    cfg = load_config(write_cfg(bad((f'  psk = "{PSK1}"\n', f'  psk_file = "{pf}"\n'))))
    assert cfg.tunnels[0].psk == PSK1.encode()
    pf.write_text("bad psk with spaces")
    with pytest.raises(ConfigError) as ei:
        load_config(write_cfg(bad((f'  psk = "{PSK1}"\n', f'  psk_file = "{pf}"\n'))))
    assert "bad psk with spaces" not in str(ei.value) and "psk_file" in str(ei.value)


def test_world_readable_warning(write_cfg):
    cfg = load_config(write_cfg(BASE, mode=0o644))
    assert any("chmod 600" in w for w in cfg.warnings)
    assert not any(PSK1 in w for w in cfg.warnings)
    assert load_config(write_cfg(BASE, mode=0o600)).warnings == []


def test_fingerprint_tracks_changes():
    a = parse_config(BASE).tunnels
    b = parse_config(BASE.replace(PSK2, PSK2[:-1] + "Z")).tunnels
    c = parse_config(BASE.replace('name = "tun1"', 'name = "tun1"\n  esp_lifetime = 1800', 1)).tunnels
    assert a[0].fingerprint() == b[0].fingerprint()
    assert a[1].fingerprint() != b[1].fingerprint()
    assert a[0].fingerprint() != c[0].fingerprint() and a[1].fingerprint() == c[1].fingerprint()
    assert PSK1 not in a[0].fingerprint()


def test_missing_file():
    with pytest.raises(ConfigError) as ei:
        load_config("/nonexistent/cgwd.toml")
    assert "no such file" in str(ei.value)


@pytest.mark.parametrize("text,kind,enc,integ,group", [
    ("aes128-sha1-modp1024", "ike", "aes128", "sha1", 2),
    ("aes256-sha512-ecp384", "ike", "aes256", "sha512", 20),
    ("aes256gcm16-modp2048s256", "esp", "aes256gcm16", None, 24),
    ("aes128-sha256", "esp", "aes128", "sha256", None),
    ("aes128-sha1-modp1536", "esp", "aes128", "sha1", 5),
])
def test_parse_proposal(text, kind, enc, integ, group):
    p = parse_proposal(text, kind)
    assert (p.encryption, p.integrity, p.dh_group) == (enc, integ, group)


def test_example_config_is_valid(tmp_path):
    here = os.path.dirname(__file__)
    text = open(os.path.join(here, "..", "..", "examples", "cgwd.toml")).read()
    for n in ("tun1", "tun2"):
        (tmp_path / f"{n}.psk").write_text(PSK1)
        text = text.replace(f"/etc/cgwd/{n}.psk", str(tmp_path / f"{n}.psk"))
    cfg = parse_config(text)
    assert len(cfg.tunnels) == 2


def test_example_config_is_valid_and_lists_every_key(tmp_path):
    import re

    from cgwd import config as cfgmod
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    text = open(os.path.join(root, "examples", "cgwd.toml")).read()
    for n, psk in ((1, PSK1), (2, PSK2)):
        f = tmp_path / f"tun{n}.psk"
        f.write_text(psk + "\n")
        os.chmod(f, 0o600)
        text = text.replace(f"/etc/cgwd/tun{n}.psk", str(f))
    cfg = parse_config(text, source="examples/cgwd.toml")
    assert [t.name for t in cfg.tunnels] == ["tun1", "tun2"]
    # every key the parser knows is shown (set or commented out) so operators can find it
    shown = set(re.findall(r"^\s*#?\s*([a-z_]+)\s*=", text, re.M)) | set(re.findall(r"or: ([a-z_]+) =", text))
    known = cfgmod._DAEMON_KEYS | cfgmod._VPN_ONLY_KEYS | cfgmod._TUNNEL_KEYS
    assert sorted(known - shown - {"tunnel"}) == []


# ------------------------------------------------------------- IKEv2 and static routing keys

STATIC = bad(("local_asn = 65000\nremote_asn = 64512\n", ""), (VPN, 'routing = "static"\nstatic_routes = ["10.0.0.0/16", "10.1.0.0/16"]\n'))

NEW_KEY_CASES = [
    ("ike_version 3", bad((T1, T1 + "  ike_version = 3\n")), "vpn[0].tunnel[0]", "ike_version", "must be 1 (IKEv1) or 2 (IKEv2)"),
    ("ike_version as string", bad((VPN, VPN + 'ike_version = "2"\n')), "vpn[0]", "ike_version", "must be 1 (IKEv1) or 2 (IKEv2), the integer; got '2'"),
    ("ike_version bool", bad((T1, T1 + "  ike_version = true\n")), "vpn[0].tunnel[0]", "ike_version", "got a boolean"),
    ("startup_action typo", bad((T1, T1 + '  ike_version = 2\n  startup_action = "strat"\n')), "vpn[0].tunnel[0]", "startup_action", "did you mean 'start'"),
    ("start needs IKEv2", bad((T1, T1 + '  startup_action = "start"\n')), "vpn[0].tunnel[0]", "startup_action", "needs IKEv2: set ike_version = 2"),
    ("start at VPN level with IKEv1", bad((VPN, VPN + 'startup_action = "start"\n')), "vpn[0]", "startup_action", "needs IKEv2"),
    ("GCM IKE proposal under IKEv2 needs a PRF", bad((T1, T1 + '  ike_version = 2\n  ike_proposals = ["aes256gcm16-ecp384"]\n')), "vpn[0].tunnel[0]", "ike_proposals", "needs a PRF, e.g. 'aes256gcm16-prfsha384-ecp384'"),
    ("PRF in an IKEv1 proposal", bad((T1, T1 + '  ike_proposals = ["aes128-sha256-prfsha256-modp2048"]\n')), "vpn[0].tunnel[0]", "ike_proposals", "only written for IKEv2 IKE proposals"),
    ("PRF in an ESP proposal", bad((T1, T1 + '  ike_version = 2\n  esp_proposals = ["aes128-sha256-prfsha256"]\n')), "vpn[0].tunnel[0]", "esp_proposals", "an ESP proposal has none"),
    ("GCM IKEv1 hints at IKEv2", bad((T1, T1 + '  ike_proposals = ["aes128gcm16-prfsha256-modp2048"]\n')), "vpn[0].tunnel[0]", "ike_proposals", "or set ike_version = 2"),
    ("bad routing", bad((VPN, VPN + 'routing = "statc"\n')), "vpn[0]", "routing", "did you mean 'static'"),
    ("routing at tunnel level", bad((T1, T1 + '  routing = "static"\n')), "vpn[0].tunnel[0]", "routing", "unknown key"),
    ("static without routes", bad(("local_asn = 65000\nremote_asn = 64512\n", ""), (VPN, 'routing = "static"\n')), "vpn[0]", "static_routes", "missing: with routing = \"static\""),
    ("static with empty routes", STATIC.replace('["10.0.0.0/16", "10.1.0.0/16"]', "[]"), "vpn[0]", "static_routes", "is empty"),
    ("static route not a prefix", STATIC.replace('"10.1.0.0/16"', '"10.1.0.0/33"'), "vpn[0]", "static_routes", "is not an IPv4 prefix"),
    ("static route host bits", STATIC.replace('"10.1.0.0/16"', '"10.1.2.0/16"'), "vpn[0]", "static_routes", "did you mean '10.1.0.0/16'"),
    ("static route twice", STATIC.replace('"10.1.0.0/16"', '"10.0.0.0/16"'), "vpn[0]", "static_routes", "same prefix twice"),
    ("static default route loops", STATIC.replace('"10.1.0.0/16"', '"0.0.0.0/0"'), "vpn[0]", "static_routes", "covers AWS endpoint 198.51.100.2 of tunnel 'tun1'"),
    ("static route over our own address", STATIC.replace('"10.1.0.0/16"', '"203.0.113.0/24"'), "vpn[0]", "static_routes", "covers this box's outside address 203.0.113.2"),
    ("static route in link-local", STATIC.replace('"10.1.0.0/16"', '"169.254.0.0/16"'), "vpn[0]", "static_routes", "is inside 169.254.0.0/16"),
    ("static_routes with bgp", bad((VPN, VPN + 'static_routes = ["10.0.0.0/16"]\n')), "vpn[0]", "static_routes", "applies only with routing = \"static\""),
    ("hold down with bgp", bad((VPN, VPN + "static_hold_down = 30\n")), "vpn[0]", "static_hold_down", "applies only with routing"),
    ("health check with bgp", bad((VPN, VPN + "health_check = 10\n")), "vpn[0]", "health_check", "applies only with routing"),
    ("advertise with static", STATIC.replace('routing = "static"', 'routing = "static"\nadvertise = ["10.200.0.0/24"]'), "vpn[0]", "advertise", "means nothing with routing = \"static\""),
    ("asn with static", STATIC.replace('routing = "static"', 'routing = "static"\nlocal_asn = 65000'), "vpn[0]", "local_asn", "no BGP runs"),
    ("med on a static tunnel", bad((T1, T1 + "  med = 10\n")).replace("local_asn = 65000\nremote_asn = 64512\n", "").replace(VPN, 'routing = "static"\nstatic_routes = ["10.0.0.0/16"]\n'), "vpn[0].tunnel[0]", "med", "no BGP runs"),
    ("hold_time default on a static VPN", STATIC.replace('routing = "static"', 'routing = "static"\nhold_time = 30'), "vpn[0]", "hold_time", "no BGP runs"),
    ("unknown primary", STATIC.replace('routing = "static"', 'routing = "static"\nstatic_primary = "tun3"'), "vpn[0]", "static_primary", "'tun3' is not a tunnel of this VPN connection (its tunnels: 'tun1', 'tun2')"),
    ("hold down negative", STATIC.replace('routing = "static"', 'routing = "static"\nstatic_hold_down = -1'), "vpn[0]", "static_hold_down", "between 0 and 3600"),
    ("health check true", STATIC.replace('routing = "static"', 'routing = "static"\nhealth_check = true'), "vpn[0]", "health_check", "must be false or the interval in seconds"),
    ("health check zero", STATIC.replace('routing = "static"', 'routing = "static"\nhealth_check = 0'), "vpn[0]", "health_check", "between 1 and 3600"),
    ("fail_closed not bool", bad((VPN, VPN + 'fail_closed = "no"\n')), "vpn[0]", "fail_closed", "must be true or false"),
]


@pytest.mark.parametrize("name,text,table,key,words", NEW_KEY_CASES, ids=[c[0] for c in NEW_KEY_CASES])
def test_bad_new_keys(name, text, table, key, words, write_cfg):
    test_bad_config(name, text, table, key, words, write_cfg)


def test_ike_version_and_startup_action_read_back():
    a = parse_config(BASE).tunnels
    assert [(t.ike_version, t.startup_action) for t in a] == [(1, "add"), (1, "add")]
    text = bad((VPN, VPN + "ike_version = 2\n"), (T1, T1 + '  startup_action = "start"\n  ike_proposals = ["aes256gcm16-prfsha384-ecp384", "aes128-sha256-modp2048"]\n'))
    t1, t2 = parse_config(text).tunnels
    assert (t1.ike_version, t1.startup_action, t2.ike_version, t2.startup_action) == (2, "start", 2, "add")
    assert t1.ike_proposals == ("aes256gcm16-prfsha384-ecp384", "aes128-sha256-modp2048")
    gcm, cbc = t1.ike
    assert (gcm.encryption, gcm.integrity, gcm.prf, gcm.dh_group) == ("aes256gcm16", None, "sha384", 20)
    assert (cbc.encryption, cbc.integrity, cbc.prf, cbc.dh_group) == ("aes128", "sha256", "sha256", 14)
    one = parse_config(bad((T1, T1 + "  ike_version = 1\n"))).tunnels[0]
    assert one.fingerprint() == a[0].fingerprint()  # an explicit 1 is the default
    assert t2.fingerprint() != parse_config(BASE).tunnels[1].fingerprint()


def test_static_vpn_read_back():
    cfg = parse_config(STATIC)
    assert cfg.warnings == []
    v = cfg.vpns[0]
    assert v.routing == "static" and v.static_routes == (IPv4Network("10.0.0.0/16"), IPv4Network("10.1.0.0/16"))
    assert (v.static_primary, v.static_hold_down, v.health_check, v.fail_closed) == ("tun1", 60, None, True)
    assert v.advertise == [] and v.local_asn == v.remote_asn == 0
    for t in v.tunnels:
        assert t.routing == "static" and t.static_routes == v.static_routes and t.fail_closed and t.health_check is None
    text = STATIC.replace('routing = "static"', 'routing = "static"\nstatic_primary = "tun2"\nstatic_hold_down = 0\nhealth_check = 5\nfail_closed = false\necmp = true')
    v = parse_config(text).vpns[0]
    assert (v.static_primary, v.static_hold_down, v.health_check, v.fail_closed, v.ecmp) == ("tun2", 0, 5, False, True)
    assert v.tunnels[0].health_check == 5 and v.tunnels[1].fail_closed is False
    assert parse_config(STATIC.replace('routing = "static"', 'routing = "static"\nhealth_check = false')).vpns[0].health_check is None


def test_bgp_vpn_new_defaults():
    v = parse_config(BASE).vpns[0]
    assert (v.routing, v.static_routes, v.static_primary, v.health_check, v.fail_closed) == ("bgp", (), "", None, True)
    assert parse_config(bad((VPN, VPN + "fail_closed = false\n"))).vpns[0].fail_closed is False


def test_static_and_bgp_vpn_on_one_box():
    second = STATIC[STATIC.index("[[vpn]]"):].replace('name = "vpn-0123456789abcdef0"', 'name = "vpn-static"')
    second = second.replace('"tun1"', '"tun3"').replace('"tun2"', '"tun4"').replace("198.51.100.", "192.0.2.")
    second = second.replace("169.254.10.", "169.254.20.").replace("169.254.11.", "169.254.21.")
    cfg = parse_config(BASE + "\n" + second)
    assert [v.routing for v in cfg.vpns] == ["bgp", "static"]
    assert [v.static_primary for v in cfg.vpns] == ["", "tun3"]


# ------------------------------------------------------------------------------- IPv6

V6 = bad(('"169.254.10.0/30"', '"fd00:10::/126"'), ('"169.254.11.0/30"', '"fd00:11::/126"'), ('"10.200.0.0/24"', '"2001:db8:200::/48"'))
V6_OUTER = bad(('"203.0.113.2"', '"2001:db8:1::2"'), ('"198.51.100.2"', '"2001:db8:a::1"'), ('"198.51.100.3"', '"2001:db8:a::2"'))

V6_CASES = [
    ("v6 inside not /126", V6.replace("fd00:10::/126", "fd00:10::/64"), "vpn[0].tunnel[0]", "inside_cidr", "must be a /126"),
    ("v6 inside outside fd00::/8", V6.replace("fd00:10::/126", "2001:db8::/126"), "vpn[0].tunnel[0]", "inside_cidr", "is not inside fd00::/8"),
    ("v6 inside host bits", V6.replace("fd00:10::/126", "fd00:10::2/126"), "vpn[0].tunnel[0]", "inside_cidr", "did you mean 'fd00:10::/126'"),
    ("v6 not a prefix", V6.replace("fd00:10::/126", "fd00:10::zz/126"), "vpn[0].tunnel[0]", "inside_cidr", "is not an IPv6 prefix"),
    ("overlapping v6 inside", V6.replace("fd00:11::/126", "fd00:10::/126"), "vpn[0].tunnel[1]", "inside_cidr", "overlaps fd00:10::/126 of vpn[0].tunnel[0]"),
    ("mixed inner families", V6.replace("fd00:11::/126", "169.254.11.0/30"), "vpn[0].tunnel[1]", "inside_cidr", "a VPN connection carries one family"),
    ("v4 prefix on a v6 VPN", V6.replace('"2001:db8:200::/48"', '"2001:db8:200::/48", "10.200.0.0/24"'), "vpn[0]", "advertise", "10.200.0.0/24 is IPv4 but the tunnels' inside addresses are IPv6"),
    ("v6 prefix on a v4 VPN", bad((VPN, 'advertise = ["2001:db8:200::/48"]\n')), "vpn[0]", "advertise", "is IPv6 but the tunnels' inside addresses are IPv4"),
    ("v6 link-local advertised", V6.replace('"2001:db8:200::/48"', '"fe80::/64"'), "vpn[0]", "advertise", "link-local (fe80::/10)"),
    ("v6 import list of the wrong family", V6.replace(VPN.replace("10.200.0.0/24", "2001:db8:200::/48"), VPN.replace("10.200.0.0/24", "2001:db8:200::/48") + 'import = ["10.0.0.0/8"]\n'), "vpn[0]", "import", "is IPv4 but"),
    ("v6 mss too big for mtu", V6.replace(T1.replace("169.254.10.0/30", "fd00:10::/126"), T1.replace("169.254.10.0/30", "fd00:10::/126") + "  mtu = 1400\n  mss = 1359\n"), "vpn[0].tunnel[0]", "mss", "at most mtu - 60 = 1340"),
    ("bad v6 outside address", V6_OUTER.replace("2001:db8:a::1", "2001:db8:a::g"), "vpn[0].tunnel[0]", "remote_address", "is not an IPv6 address"),
    ("link-local outside address", V6_OUTER.replace("2001:db8:a::1", "fe80::1"), "vpn[0].tunnel[0]", "remote_address", "cannot be an outside address"),
    ("mixed outer families", V6_OUTER.replace('"2001:db8:a::1"', '"198.51.100.2"'), "vpn[0].tunnel[0]", "remote_address", "198.51.100.2 is IPv4 but local_address 2001:db8:1::2 is IPv6"),
    ("v6 static route on a v4 VPN", STATIC.replace('"10.1.0.0/16"', '"2001:db8::/32"'), "vpn[0]", "static_routes", "is IPv6 but the tunnels' inside addresses are IPv4"),
    ("static route in v6 link-local", V6.replace("local_asn = 65000\nremote_asn = 64512\n", "").replace('advertise = ["2001:db8:200::/48"]\n', 'routing = "static"\nstatic_routes = ["fe80::/64"]\n'), "vpn[0]", "static_routes", "overlaps fe80::/10"),
    ("static route over a v6 inside", V6.replace("local_asn = 65000\nremote_asn = 64512\n", "").replace('advertise = ["2001:db8:200::/48"]\n', 'routing = "static"\nstatic_routes = ["fd00::/16"]\n'), "vpn[0]", "static_routes", "overlaps the inside fd00:10::/126 of tunnel 'tun1'"),
    ("v6 static default route loops", V6_OUTER.replace("local_asn = 65000\nremote_asn = 64512\n", "").replace('"169.254.10.0/30"', '"fd00:10::/126"').replace('"169.254.11.0/30"', '"fd00:11::/126"').replace(VPN, 'routing = "static"\nstatic_routes = ["::/0"]\n'), "vpn[0]", "static_routes", "::/0 covers AWS endpoint 2001:db8:a::1 of tunnel 'tun1'"),
]


@pytest.mark.parametrize("name,text,table,key,words", V6_CASES, ids=[c[0] for c in V6_CASES])
def test_bad_ipv6(name, text, table, key, words, write_cfg):
    test_bad_config(name, text, table, key, words, write_cfg)


def test_ipv6_inside_read_back():
    from ipaddress import IPv6Address, IPv6Interface, IPv6Network
    cfg = parse_config(V6)
    t1, t2 = cfg.tunnels
    assert t1.inside_cidr == IPv6Network("fd00:10::/126") and t1.inner_family == 6 and t1.outer_family == 4
    assert t1.inside_local == IPv6Interface("fd00:10::2/126") and t1.inside_remote == IPv6Address("fd00:10::1")
    assert t2.inside_local == IPv6Interface("fd00:11::2/126")
    # unset: the data path follows the transform (IPv6 MSS = MTU - 60, 20 below the IPv4 one)
    assert t1.mss is None and t1.mtu is None
    assert cfg.vpns[0].inner_family == 6 and cfg.vpns[0].advertise == [IPv6Network("2001:db8:200::/48")]
    assert not t1.import_policy.accepts("2001:db8:200::/56")  # our own prefix is never imported back
    assert parse_config(BASE).tunnels[0].mss is None and parse_config(BASE).vpns[0].inner_family == 4


def test_ipv6_outside_read_back():
    from ipaddress import IPv6Address
    cfg = parse_config(V6_OUTER)
    t1, t2 = cfg.tunnels
    assert t1.local_address == t1.public_address == IPv6Address("2001:db8:1::2")
    assert t1.remote_address == IPv6Address("2001:db8:a::1") and t1.outer_family == 6 and t1.inner_family == 4
    assert t1.local_id == "2001:db8:1::2" and t1.remote_id == "2001:db8:a::1"
    both = bad(('"203.0.113.2"', '"2001:db8:1::2"'), ('"198.51.100.2"', '"2001:db8:a::1"'), ('"198.51.100.3"', '"2001:db8:a::2"'),
               ('"169.254.10.0/30"', '"fd00:10::/126"'), ('"169.254.11.0/30"', '"fd00:11::/126"'), ('"10.200.0.0/24"', '"2001:db8:200::/48"'))
    t = parse_config(both).tunnels[0]
    assert (t.outer_family, t.inner_family) == (6, 6)


def test_ipv6_static_vpn_and_a_v4_vpn_side_by_side():
    from ipaddress import IPv6Network
    v6 = V6.replace("local_asn = 65000\nremote_asn = 64512\n", "").replace('advertise = ["2001:db8:200::/48"]\n', 'routing = "static"\nstatic_routes = ["2001:db8:100::/56"]\n')
    v = parse_config(v6).vpns[0]
    assert v.routing == "static" and v.static_routes == (IPv6Network("2001:db8:100::/56"),)
    second = V6[V6.index("[[vpn]]"):].replace('name = "vpn-0123456789abcdef0"', 'name = "vpn-v6"')
    second = second.replace('"tun1"', '"tun3"').replace('"tun2"', '"tun4"').replace("198.51.100.", "192.0.2.")
    cfg = parse_config(BASE + "\n" + second)
    assert [v.inner_family for v in cfg.vpns] == [4, 6]


def test_static_default_route_over_the_other_outer_family_is_no_loop():
    # IKE and ESP run over IPv6: an IPv4 default route into the tunnels cannot capture them
    text = V6_OUTER.replace("local_asn = 65000\nremote_asn = 64512\n", "").replace(VPN, 'routing = "static"\nstatic_routes = ["0.0.0.0/0"]\n')
    assert [str(n) for n in parse_config(text).vpns[0].static_routes] == ["0.0.0.0/0"]


# -------------------------------------------- reload: which changes apply in place (issue 12.5)

import dataclasses  # noqa: E402
import ipaddress  # noqa: E402

from hypothesis import given, settings, strategies as st  # noqa: E402

from cgwd import config as cfgmod  # noqa: E402
from cgwd.bgp.policy import ImportPolicy  # noqa: E402


def _other(v, k: int):
    """A value of the same kind as ``v`` that differs from it (k > 0 picks which)."""
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return v + k
    if v is None:
        return k
    if isinstance(v, bytes):
        return v + b"x" * k
    if isinstance(v, str):
        return v + "x" * k
    if isinstance(v, ImportPolicy):
        return ImportPolicy("none") if v.mode != "deny" else ImportPolicy("aws-default")
    if isinstance(v, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return v + k
    if isinstance(v, (ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
        return ipaddress.ip_interface(f"{v.ip + 4 * k}/{v.network.prefixlen}")
    if isinstance(v, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return ipaddress.ip_network(f"{v.network_address + v.num_addresses * k}/{v.prefixlen}")
    if isinstance(v, tuple):
        return v + (f"extra{k}" if not v or isinstance(v[0], str) else ipaddress.ip_network(f"10.{k}.0.0/16"),)
    if isinstance(v, list):
        return v + [ipaddress.ip_network(f"10.{k}.0.0/16")]
    raise AssertionError(f"no alternative for {type(v).__name__}")


TUNNEL_FIELDS = [f.name for f in dataclasses.fields(cfgmod.TunnelConfig)]
VPN_FIELDS = [f.name for f in dataclasses.fields(cfgmod.VpnConfig) if f.name != "tunnels"]


def test_every_field_has_one_class():
    assert cfgmod.TUNNEL_IN_PLACE | cfgmod.TUNNEL_RESTART == set(TUNNEL_FIELDS)
    assert not cfgmod.TUNNEL_IN_PLACE & cfgmod.TUNNEL_RESTART
    assert cfgmod.VPN_IN_PLACE | cfgmod.VPN_RESTART == set(VPN_FIELDS)
    assert not cfgmod.VPN_IN_PLACE & cfgmod.VPN_RESTART
    for must in ("psk", "local_id", "remote_id", "local_address", "public_address", "remote_address",
                 "inside_cidr", "ike_proposals", "esp_proposals", "ike_version", "startup_action"):
        assert must in cfgmod.TUNNEL_RESTART
    for may in ("med", "prepend", "dpd_interval", "dpd_retries", "import_policy", "advertise", "max_prefix"):
        assert may in cfgmod.TUNNEL_IN_PLACE
    assert "log_level" in cfgmod.DAEMON_IN_PLACE and "socket" in cfgmod.DAEMON_RESTART


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(TUNNEL_FIELDS), st.integers(1, 3), st.sampled_from(["v4", "v6", "static"]))
def test_a_change_to_any_one_tunnel_field_is_classified(name, k, which):
    text = {"v4": BASE, "v6": V6, "static": STATIC}[which]
    old = parse_config(text).tunnels[0]
    new = dataclasses.replace(old, **{name: _other(getattr(old, name), k)})
    ch = old.changes(new)
    assert ch and ch.in_place | ch.restart == {name}, ch
    assert (name in ch.restart) == (name in cfgmod.TUNNEL_RESTART)
    assert ch.needs_restart == (old.restart_fingerprint() != new.restart_fingerprint())
    if name != "psk_source":  # where the PSK came from changes nothing the tunnel does
        assert old.fingerprint() != new.fingerprint()
    assert not old.changes(dataclasses.replace(old))
    assert PSK1 not in repr(ch)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(VPN_FIELDS), st.integers(1, 3))
def test_a_change_to_any_one_vpn_field_is_classified(name, k):
    old = parse_config(BASE).vpns[0]
    new = dataclasses.replace(old, **{name: _other(getattr(old, name), k)})
    ch = old.changes(new)
    assert ch.in_place | ch.restart == {name}
    assert (name in ch.restart) == (name in cfgmod.VPN_RESTART)


def test_reload_classification_from_config_text():
    a = parse_config(BASE)
    b = parse_config(bad((T1, T1 + "  med = 50\n  dpd_interval = 5\n"), (VPN, 'advertise = ["10.200.0.0/24", "10.201.0.0/24"]\n')))
    ch = a.tunnels[0].changes(b.tunnels[0])
    assert ch.in_place == {"med", "dpd_interval", "advertise", "import_policy"} and not ch.needs_restart
    assert a.tunnels[0].restart_fingerprint() == b.tunnels[0].restart_fingerprint()
    assert a.vpns[0].changes(b.vpns[0]).in_place == {"advertise", "import_policy"}
    c = parse_config(BASE.replace(PSK1, PSK1[:-1] + "Q"))
    assert a.tunnels[0].changes(c.tunnels[0]).restart == {"psk"}
    d = parse_config(bad((T1, T1 + "  ike_version = 2\n")))
    assert a.tunnels[0].changes(d.tunnels[0]).restart == {"ike_version"}
    assert cfgmod.daemon_changes(a.daemon, parse_config(BASE.replace('log_level = "info"', 'log_level = "debug"')).daemon).in_place == {"log_level"}


@pytest.mark.parametrize("text,version,want", [
    ("aes256gcm16-prfsha384-ecp384", 2, ("aes256gcm16", None, "sha384", 20)),
    ("aes256gcm16-sha384-ecp384", 2, ("aes256gcm16", None, "sha384", 20)),
    ("aes128-sha256-prfsha1-modp2048", 2, ("aes128", "sha256", "sha1", 14)),
    ("aes128-sha1-modp1024", 2, ("aes128", "sha1", "sha1", 2)),
    ("aes128-sha1-modp1024", 1, ("aes128", "sha1", None, 2)),
])
def test_parse_ikev2_proposal(text, version, want):
    # strongSwan writes a GCM IKE SA's PRF as a bare hash too: the same proposal
    p = parse_proposal(text, "ike", version)
    assert (p.encryption, p.integrity, p.prf, p.dh_group) == want


@pytest.mark.parametrize("text,version,words", [
    ("aes256gcm16-sha384-ecp384", 1, "GCM is not allowed in IKEv1 phase 1"),
    ("aes256gcm16-sha384-prfsha384-ecp384", 2, "names the PRF twice"),
    ("aes256gcm16-ecp384", 2, "needs a PRF"),
    ("aes128-sha1-modp1536", 2, "DH group 5 (modp1536) is not allowed"),
])
def test_bad_ikev2_proposal(text, version, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        parse_proposal(text, "ike", version)


_ENC_T = ["aes128", "aes256", "aes128gcm16", "aes256gcm16", "aes", "3des"]
_HASH_T = ["sha1", "sha256", "sha384", "sha512", "sha", "md5"]
_PRF_T = ["prfsha1", "prfsha256", "prfsha384", "prfsha512"]
_DH_T = ["modp1024", "modp1536", "modp2048", "modp3072", "ecp256", "ecp384", "ecp521", "modp2048s256", "modp768"]
_ANY_T = _ENC_T + _HASH_T + _PRF_T + _DH_T + ["noesn", "x"]


def _maybe(pool):
    return st.one_of(st.none(), st.sampled_from(pool))


# proposal-shaped texts (enc, hash, prf, group, each maybe, in order), and token salads
_PROPOSALS = st.one_of(
    st.tuples(st.sampled_from(_ENC_T), _maybe(_HASH_T), _maybe(_PRF_T), _maybe(_DH_T), _maybe(["noesn", "x"])).map(
        lambda t: "-".join(x for x in t if x)),
    st.lists(st.sampled_from(_ANY_T), min_size=1, max_size=5).map("-".join),
)


def _engine_reading(text: str, kind: str, version: int) -> tuple:
    """(encryption, integrity, prf, group) as the IKE engine of ``version`` reads ``text``."""
    if version == 2:
        from cgwd.ike.v2 import proposals as v2

        if kind == "ike":
            p2 = v2.parse_ike_proposal(text)
            return p2.encryption, p2.integrity, p2.prf, p2.group
        e2 = v2.parse_esp_proposal(text)
        return e2.encryption, e2.integrity, None, e2.group
    from cgwd.ike import session as v1

    if kind == "ike":
        p1 = v1.parse_ike_proposal(text)
        return f"aes{p1.enc_bits}", p1.hash, None, p1.group
    e1 = v1.parse_esp_proposal(text)
    return e1.encryption, e1.integrity, None, e1.group


@settings(max_examples=1500, deadline=None)
@given(_PROPOSALS, st.sampled_from(["ike", "esp"]), st.sampled_from([1, 2]))
def test_aws_rules_and_the_ike_engines_read_a_proposal_alike(text, kind, version):
    # whatever the config accepts (the one parser, cgwd.ike.proposals, with AWS's rules), the
    # engine of that IKE version accepts with the same meaning, as written and canonical
    try:
        p = parse_proposal(text, kind, version)
    except ValueError:
        return
    mine = (p.encryption, p.integrity, p.prf, p.dh_group)
    assert _engine_reading(text, kind, version) == mine
    assert _engine_reading(p.text, kind, version) == mine
    assert parse_proposal(p.text, kind, version) == p
    assert p.dh == (cfgmod.DH_NAMES[p.dh_group] if p.dh_group else None)
