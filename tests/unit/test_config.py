import os
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from cgwd.config import ConfigError, load_config, parse_config, parse_proposal
from conftest import BASE, PSK1, PSK2

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
    assert (t1.replay_window, t1.rekey_fuzz, t1.dpd_interval, t1.dpd_retries, t1.hold_time, t1.mtu, t1.mss) == (1024, 100, 10, 3, 30, 1436, 1379)
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
