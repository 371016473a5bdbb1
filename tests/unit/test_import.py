import os
import re
import stat
import subprocess
import sys

import pytest

from cgwd.aws_import import AwsImportError, detect_format, import_aws, toml_string
from cgwd.config import load_config, parse_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CGWCTL = [sys.executable, "-c", "import sys; from cgwd.cli import main; sys.exit(main())"]

# fixture -> (format, local_address, [(remote, psk, inside_local, local_asn, remote_asn, local, public)])
EXPECT = {
    "aws_vpn.xml": ("xml", None, [
        ("52.2.144.13", "Iw2IAN9XUsQeYUrkMGP3kP59ugFDkfHg", "169.254.44.42/30", 65000, 64512, "203.0.113.2", "203.0.113.2"),
        ("52.60.180.125", "uoAp_DrEd9VMwfygsBfTlyT46GYCpe4_", "169.254.177.10/30", 65000, 64512, "203.0.113.2", "203.0.113.2")]),
    "aws_describe_vpn_connections.json": ("json", None, [
        ("52.2.144.13", "Iw2IAN9XUsQeYUrkMGP3kP59ugFDkfHg", "169.254.44.42/30", 65000, 64512, "203.0.113.2", "203.0.113.2"),
        ("52.60.180.125", "uoAp_DrEd9VMwfygsBfTlyT46GYCpe4_", "169.254.177.10/30", 65000, 64512, "203.0.113.2", "203.0.113.2"),
        ("35.80.1.1", "Second.Conn_Key1xyzABC", "169.254.12.2/30", 65000, 64513, "203.0.113.2", "203.0.113.2"),
        ("35.80.2.2", "Second.Conn_Key2xyzABC", "169.254.13.6/30", 65000, 64513, "203.0.113.2", "203.0.113.2")]),
    "aws_generic.txt": ("generic", None, [
        ("34.217.232.61", "kX2r9.Qm7_VwTz4PbN8sLd3Hf6Gj1YcE", "169.254.123.134/30", 65010, 64512, "198.51.100.7", "198.51.100.7"),
        ("54.69.109.228", "Zt5.wq8RpLm_3VxK7sD2bNf9Hc4JgY6u", "169.254.30.58/30", 65010, 64512, "198.51.100.7", "198.51.100.7")]),
    "aws_yamaha_rtx.txt": ("yamaha", None, [
        ("52.193.10.11", "hPq3.Rz8_Tw5Vy2XaB7cD4eF9gH1jK6m", "169.254.24.14/30", 65000, 10124, "198.51.100.20", "198.51.100.20"),
        ("54.250.20.22", "Nm4_Lp7.Qr2St5Uv8Wx1Yz3Ab6Cd9Ef0", "169.254.25.90/30", 65000, 10124, "198.51.100.20", "198.51.100.20")]),
    # seed 003: NEC IX behind a NAT router at 192.168.1.10, public 203.165.211.85
    "aws_cisco_ios_seed003.txt": ("cisco", "192.168.1.10", [
        ("34.217.232.61", "pq5RW0mMbSxz8k8.ZRY2T3C82D9GX8_z", "169.254.123.134/30", 65000, 64512, "192.168.1.10", "203.165.211.85"),
        ("54.69.109.228", "QAElJrXGVeBgHi.U292jVF3eLTATQXMQ", "169.254.30.58/30", 65000, 64512, "192.168.1.10", "203.165.211.85")]),
    "aws_cisco_asa.txt": ("cisco", "198.51.100.30", [
        ("3.112.40.17", "Ab3_dE6.gH9jK2mN5pQ8rS1tU4vW7xY0", "169.254.61.222/30", 65020, 64512, "198.51.100.30", "198.51.100.30"),
        ("13.113.90.8", "Zy9.xW6_vU3tS0rQ7pO4nM1lK8jI5hG2", "169.254.172.50/30", 65020, 64512, "198.51.100.30", "198.51.100.30")]),
}


@pytest.mark.parametrize("fixture", sorted(EXPECT))
def test_import_fixture(fixture, data_path):
    fmt, local, tunnels = EXPECT[fixture]
    text = open(data_path(fixture)).read()
    assert detect_format(text) == fmt
    res = import_aws(text, local_address=local, advertise=["10.200.0.0/24"])
    assert res.fmt == fmt
    cfg = parse_config(res.text)
    got = [(str(t.remote_address), t.psk.decode(), str(t.inside_local), t.local_asn, t.remote_asn, str(t.local_address), str(t.public_address)) for t in cfg.tunnels]
    assert got == tunnels
    assert all(str(t.inside_remote) == str(t.inside_local.ip - 1) for t in cfg.tunnels)
    assert all(t.esp_proposals == ("aes128-sha1-modp1024",) and t.ike_proposals == ("aes128-sha1-modp1024",) for t in cfg.tunnels)
    for line in res.summary:
        assert all(p[1] not in line for p in tunnels)


def test_json_tgw(data_path):
    res = import_aws(open(data_path("aws_describe_vpn_connections.json")).read())
    cfg = parse_config(res.text)
    assert [v.gateway_type for v in cfg.vpns] == ["vgw", "tgw"]
    assert cfg.vpns[1].name == "vpn-09f8e7d6c5b4a3210" and cfg.vpns[1].ecmp


@pytest.mark.parametrize("text,words", [
    ("", "empty"),
    ("hello world, not a config", "unrecognised input"),
    ("<vpn_connection id='vpn-1'><ipsec_tunnel><customer_gateway>", "malformed or truncated"),
    ('{"VpnConnections": [{"VpnConnectionId": "vpn-1"}]}', "vpn-1: no CustomerGatewayConfiguration"),
    ('{"VpnConnections": [', "malformed or truncated"),
    ('{"Reservations": []}', "VpnConnections"),
])
def test_bad_input(text, words):
    with pytest.raises(AwsImportError) as ei:
        import_aws(text)
    assert words in str(ei.value)


def test_missing_psk_named(data_path):
    text = open(data_path("aws_vpn.xml")).read()
    i = text.rindex("<pre_shared_key>")
    j = text.index("</pre_shared_key>", i) + len("</pre_shared_key>")
    with pytest.raises(AwsImportError) as ei:
        import_aws(text[:i] + text[j:])
    assert "tunnel 2: no pre-shared key found" in str(ei.value)
    assert "Iw2IAN9XUsQeYUrkMGP3kP59ugFDkfHg" not in str(ei.value)


def test_truncated_generic(data_path):
    text = open(data_path("aws_generic.txt")).read()
    cut = text[: text.index("Inside IP Addresses")]
    with pytest.raises(AwsImportError) as ei:
        import_aws(cut)
    assert "tunnel 1: no customer gateway inside address found" in str(ei.value)


def test_template_placeholders_rejected():
    # the Yamaha seed as published: Japanese placeholders instead of values
    text = open("/work/shared/seeds/000_7050aa6f86befcca.txt").read() if os.path.exists("/work/shared/seeds/000_7050aa6f86befcca.txt") else None
    if text is None:
        pytest.skip("seed not available")
    start = text.index("# Virtual Private Cloud")
    with pytest.raises(AwsImportError) as ei:
        import_aws(text[start:])
    assert "tunnel 1" in str(ei.value)


def test_toml_string_quoting():
    s = 'a"b\\c\nd\te\x01'
    assert toml_string(s) == '"a\\"b\\\\c\\nd\\te\\u0001"'
    import tomllib
    assert tomllib.loads(f"x = {toml_string(s)}")["x"] == s


def run(*args, stdin=None):
    return subprocess.run(CGWCTL + list(args), capture_output=True, text=True, input=stdin, cwd=ROOT)


def test_cli_import_and_merge(tmp_path, data_path):
    out = tmp_path / "cgwd.toml"
    r = run("import", "aws", data_path("aws_cisco_ios_seed003.txt"), "--local-address", "192.168.1.10", "--advertise", "192.168.2.0/24", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "detected: Cisco" in r.stderr
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    first = out.read_bytes()
    cfg = load_config(str(out))
    assert cfg.warnings == [] and cfg.vpns[0].advertise[0].exploded == "192.168.2.0/24"
    r = run("import", "aws", data_path("aws_vpn.xml"), "--merge", str(out))
    assert r.returncode == 0, r.stderr
    merged = out.read_bytes()
    assert merged.startswith(first)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert len(load_config(str(out)).tunnels) == 4
    # importing the same connection again is refused, file untouched
    r = run("import", "aws", data_path("aws_vpn.xml"), "--merge", str(out))
    assert r.returncode == 1 and "already" in r.stderr and "Traceback" not in r.stderr
    assert out.read_bytes() == merged
    for psk in ("pq5RW0mMbSxz8k8.ZRY2T3C82D9GX8_z", "Iw2IAN9XUsQeYUrkMGP3kP59ugFDkfHg"):
        assert psk not in r.stderr + r.stdout


def test_cli_import_errors(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<vpn_connection><ipsec_tunnel>")
    r = run("import", "aws", str(bad), "-o", str(tmp_path / "x.toml"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    r = run("import", "aws", str(tmp_path / "missing.xml"), "-o", str(tmp_path / "x.toml"))
    assert r.returncode == 1 and "No such file" in r.stderr
    r = run("import", "aws", str(bad))
    assert r.returncode == 2 and "-o FILE" in r.stderr


# ------------------------------------------------ the lab's renderings of AWS's downloads

from cgwd.lab import awsvendor  # noqa: E402
from cgwd.lab.awsxml import XmlTunnel  # noqa: E402

VENDOR_TUNNELS = [
    XmlTunnel("203.0.113.2", "198.51.100.2", "169.254.10.0/30", 65000, 64512, "Kq7.Tx2_Vb9Lm4Np8Rs3Wz6Yc1Df5Gh0"),
    XmlTunnel("203.0.113.2", "198.51.100.6", "169.254.20.0/30", 65000, 64512, "Ab3_dE6.gH9jK2mN5pQ8rS1tU4vW7xY0",
              ike_proposal="aes256-sha256-modp2048", esp_proposal="aes256-sha256-modp2048", ike_lifetime=14400,
              esp_lifetime=1800, hold_time=60, dpd_delay=15),
]
DETECTED = {"xml": "xml", "json": "json", "generic": "generic", "yamaha": "yamaha", "cisco-ios": "cisco"}


@pytest.mark.parametrize("fmt", awsvendor.FORMATS)
@pytest.mark.parametrize("local", [None, "192.168.1.10"], ids=["direct", "nat"])
def test_vendor_rendering_roundtrip(fmt, local):
    text = awsvendor.render(fmt, "vpn-0a1b2c3d4e5f60718", "cgw-0a1", "vgw-0b2", VENDOR_TUNNELS)
    assert detect_format(text) == DETECTED[fmt]
    cfg = parse_config(import_aws(text, local_address=local).text)
    got = [(str(t.remote_address), t.psk.decode(), str(t.inside_local), t.local_asn, t.remote_asn,
            str(t.local_address), str(t.public_address), t.ike_proposals, t.esp_proposals, t.dpd_interval,
            t.dpd_retries, t.hold_time) for t in cfg.tunnels]
    assert got == [
        ("198.51.100.2", VENDOR_TUNNELS[0].psk, "169.254.10.2/30", 65000, 64512, local or "203.0.113.2",
         "203.0.113.2", ("aes128-sha1-modp1024",), ("aes128-sha1-modp1024",), 10, 3, 30),
        ("198.51.100.6", VENDOR_TUNNELS[1].psk, "169.254.20.2/30", 65000, 64512, local or "203.0.113.2",
         "203.0.113.2", ("aes256-sha256-modp2048",), ("aes256-sha256-modp2048",), 15, 3, 60),
    ]
    if fmt != "yamaha":  # AWS's Yamaha template has no phase-1 lifetime line
        assert [t.ike_lifetime for t in cfg.tunnels] == [28800, 14400]
    assert [t.esp_lifetime for t in cfg.tunnels] == [3600, 1800]


def test_vendor_rendering_refuses_what_the_vendor_cannot_say():
    t = XmlTunnel("203.0.113.2", "198.51.100.2", "169.254.10.0/30", 65000, 64512, "Kq7.Tx2_Vb9Lm4Np8Rs3Wz6Yc1Df5Gh0",
                  esp_proposal="aes128gcm16-modp1024")
    with pytest.raises(ValueError, match="yamaha download cannot express ESP encryption"):
        awsvendor.render("yamaha", "vpn-1", "cgw-1", "vgw-1", [t])


def test_cisco_keepalive_retry_interval_is_not_a_retry_count():
    # IOS `crypto isakmp keepalive 10 10`: every 10 s, retry every 10 s; the count stays AWS's 3
    text = awsvendor.render("cisco-ios", "vpn-1a2b3c4d", "cgw-1", "vgw-1", VENDOR_TUNNELS[:1])
    assert "crypto isakmp keepalive 10 10" in text
    cfg = parse_config(import_aws(text).text)
    assert (cfg.tunnels[0].dpd_interval, cfg.tunnels[0].dpd_retries) == (10, 3)


# ------------------------------------------------------------- the real seed downloads

SEEDS = "/work/shared/seeds"


def _seed(name):
    path = os.path.join(SEEDS, name)
    if not os.path.exists(path):
        pytest.skip(f"seed {name} not available")
    return open(path, encoding="utf-8").read()


def test_seed003_cisco_ios_excerpt_imports():
    # NEC IX behind a NAT router (192.168.1.10 -> 203.165.211.85), read from the Cisco IOS download
    text = _seed("003_58b5b2477542f47a.txt")
    excerpt = next(ln for ln in text.splitlines() if ln.startswith("! ----") and "crypto keyring" in ln)
    assert excerpt.strip() == open(os.path.join(os.path.dirname(__file__), "data", "aws_cisco_ios_seed003.txt")).read().strip()
    cfg = parse_config(import_aws(excerpt, local_address="192.168.1.10", advertise=["192.168.2.0/24"]).text)
    # the values the seed's author typed into the NEC IX by hand
    assert [(str(t.remote_address), t.psk.decode(), str(t.inside_local), str(t.inside_remote), t.remote_asn)
            for t in cfg.tunnels] == [
        ("34.217.232.61", "pq5RW0mMbSxz8k8.ZRY2T3C82D9GX8_z", "169.254.123.134/30", "169.254.123.133", 64512),
        ("54.69.109.228", "QAElJrXGVeBgHi.U292jVF3eLTATQXMQ", "169.254.30.58/30", "169.254.30.57", 64512)]
    assert {(str(t.local_address), str(t.public_address), t.local_asn) for t in cfg.tunnels} == {
        ("192.168.1.10", "203.165.211.85", 65000)}


def test_seed000_yamaha_download_with_values_filled_in_imports():
    # The RTX810 download as published (placeholders where the blogger hid the values),
    # followed by the blog's own additions (`tunnel select 1` / `tunnel name ...` again).
    text = _seed("000_7050aa6f86befcca.txt")
    text = text[text.index("# Amazon Web Services"):]
    with pytest.raises(AwsImportError) as ei:
        import_aws(text)
    msg = str(ei.value)
    assert "tunnel 1: the pre-shared key is not an AWS key" in msg and "tunnel 2: no AWS outside" in msg
    assert "tunnel 3" not in msg  # the blog's extra `tunnel select 1` block is the same tunnel
    psks = ["Ex1.Yamaha_Key_Tunnel1_abcdefghij", "Ex2.Yamaha_Key_Tunnel2_abcdefghij"]
    for k, (psk, rid, loc, rem) in enumerate(
            [(psks[0], "52.193.10.11", "169.254.24.14/30", "169.254.24.13"),
             (psks[1], "54.250.20.22", "169.254.25.90/30", "169.254.25.89")], 1):
        sfx = "2" if k == 2 else ""
        text = text.replace(f"ipsec ike pre-shared-key {k} text AWSで発行された事前共有キーが入ってます",
                            f"ipsec ike pre-shared-key {k} text {psk}")
        text = text.replace(f"接続先id{k}", rid)
        text = text.replace(f"ip tunnel address 発行されたBGP Local Address{sfx}\n", f"ip tunnel address {loc}\n")
        text = text.replace(f"発行されたBGP Remote Address{sfx} hold-time", f"{rem} hold-time")
        text = text.replace(f"local-address=発行されたBGP Local Address{sfx}\n", f"local-address={loc.split('/')[0]}\n")
        text = text.replace(f"ip tunnel remote address 発行されたBGP Remote Address{sfx}\n", f"ip tunnel remote address {rem}\n")
    text = text.replace("x.x.x.x(接続する自身の固定グローバルIP)", "198.51.100.20")
    cfg = parse_config(import_aws(text, advertise=["192.168.100.0/24"]).text)
    assert [(str(t.remote_address), t.psk.decode(), str(t.inside_local), str(t.inside_remote), t.local_asn,
             t.remote_asn, t.hold_time, t.dpd_interval, t.dpd_retries, str(t.local_address)) for t in cfg.tunnels] == [
        ("52.193.10.11", psks[0], "169.254.24.14/30", "169.254.24.13", 65000, 10124, 30, 10, 3, "198.51.100.20"),
        ("54.250.20.22", psks[1], "169.254.25.90/30", "169.254.25.89", 65000, 10124, 30, 10, 3, "198.51.100.20")]
