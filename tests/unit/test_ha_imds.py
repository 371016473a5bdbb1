"""The IMDSv2 client against the lab's responder on loopback: token first, then GETs; a
refused token renewed; transient failures retried and counted; an unreachable service or
a missing role in one line."""

from __future__ import annotations

import socket

import pytest

from cgwd.ha.imds import Imds
from cgwd.ha.retry import HaError, RetryPolicy
from cgwd.lab.imds import ImdsResponder

DOC = {"region": "ap-northeast-1", "availability_zone": "ap-northeast-1c", "instance_id": "i-0123456789abcdef0",
       "mac": "0e:11:22:33:44:55", "interface_id": "eni-0123456789abcdef0", "role": "cgwd-ha",
       "credentials": {"AccessKeyId": "ASIAEXAMPLE", "SecretAccessKey": "s3cr3t/KEY", "Token": "tok",
                       "Expiration": "2026-12-02T00:00:00Z"}}


def client(url, slept=None, attempts=3):
    return Imds(url, timeout=1.0, policy=RetryPolicy(attempts=attempts, base_delay=0.25),
                sleep=(slept.append if slept is not None else (lambda s: None)))


def test_identity_and_credentials_with_a_token():
    with ImdsResponder(DOC) as srv:
        c = client(srv.url)
        ident = c.identity()
        creds = c.credentials()
    assert (ident.region, ident.instance_id, ident.mac, ident.interface_id, ident.availability_zone) == (
        "ap-northeast-1", "i-0123456789abcdef0", "0e:11:22:33:44:55", "eni-0123456789abcdef0", "ap-northeast-1c")
    assert (creds.access_key, creds.secret_key, creds.token, creds.source) == (
        "ASIAEXAMPLE", "s3cr3t/KEY", "tok", "instance role cgwd-ha")
    assert "s3cr3t" not in repr(creds)
    methods = [m for m, _, _ in srv.requests]
    assert methods[0] == "PUT" and methods.count("PUT") == 1  # one token for the whole session
    assert all(status == 200 for _, _, status in srv.requests)


def test_without_a_token_the_responder_refuses():
    with ImdsResponder(DOC) as srv:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", srv.server.server_address[1], timeout=2)
        conn.request("GET", "/latest/meta-data/instance-id")
        assert conn.getresponse().status == 401


def test_an_expired_token_is_renewed_once():
    with ImdsResponder(DOC) as srv:
        c = client(srv.url)
        assert c.get("instance-id") == DOC["instance_id"]
        srv.tokens.clear()  # the token expired
        assert c.get("mac") == DOC["mac"]
    assert [m for m, _, _ in srv.requests].count("PUT") == 2


def test_transient_failures_are_retried_and_counted():
    slept = []
    with ImdsResponder(DOC, fail_first=2) as srv:
        c = client(srv.url, slept)
        assert c.get("instance-id") == DOC["instance_id"]
    assert c.retries == 2 and slept == [0.25, 0.5]


def test_no_role_means_no_credentials():
    doc = {k: v for k, v in DOC.items() if k not in ("role", "credentials")}
    with ImdsResponder(doc) as srv:
        assert client(srv.url).credentials() is None


def test_unreachable_is_one_line_with_the_attempts():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nobody listens there
    slept = []
    c = client(f"http://127.0.0.1:{port}", slept, attempts=3)
    with pytest.raises(HaError) as e:
        c.identity()
    msg = str(e.value)
    assert msg.startswith(f"IMDSv2 token: IMDS at http://127.0.0.1:{port} unreachable") and "after 3 attempts" in msg
    assert "\n" not in msg and e.value.code == "unreachable" and len(slept) == 2


def test_a_silent_service_times_out_in_one_line():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)  # accepts, never answers
    try:
        c = Imds(f"http://127.0.0.1:{s.getsockname()[1]}", timeout=0.2, policy=RetryPolicy(attempts=1),
                 sleep=lambda x: None)
        with pytest.raises(HaError, match="did not answer within 0.2 s"):
            c.get("instance-id")
    finally:
        s.close()


def test_only_http_urls():
    with pytest.raises(HaError, match="must be http://HOST"):
        Imds("https://169.254.169.254")


def test_credentials_of_the_wrong_shape_are_one_line():
    with ImdsResponder({**DOC, "credentials": {"AccessKeyId": "only"}}) as srv:
        with pytest.raises(HaError, match="credentials of role cgwd-ha are not the expected JSON document"):
            client(srv.url).credentials()
