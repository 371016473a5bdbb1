"""The EC2 instance metadata service, IMDSv2: a session token (PUT), then GETs with it.

What the takeover needs from it: the region, this instance's id, its primary interface
(``mac`` -> ``network/interfaces/macs/<mac>/interface-id``) and, when the instance has a
role, the role's temporary credentials (``iam/security-credentials/<role>``).

Plain ``http.client`` on purpose: no proxy from the environment may see these requests
(urllib honours ``http_proxy``), and the token never leaves this module's requests. An
instance whose IMDS hop limit is 1 answers nothing to a container behind a bridge: say
``--http-put-response-hop-limit 2`` where cgwd runs in one.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.parse
from dataclasses import dataclass
from typing import Callable

from .retry import HaError, RetryPolicy, with_retries

__all__ = ["Credentials", "Imds", "InstanceIdentity", "TOKEN_TTL"]

TOKEN_TTL = 21600
TOKEN_PATH = "/latest/api/token"
META = "/latest/meta-data/"


@dataclass(frozen=True)
class InstanceIdentity:
    region: str
    instance_id: str
    mac: str
    interface_id: str
    availability_zone: str | None = None


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None
    expiration: str | None
    source: str  # "instance role NAME"

    def __repr__(self) -> str:  # never the secret
        return f"Credentials(access_key={self.access_key[:4]}..., source={self.source!r})"


class _Status(Exception):
    def __init__(self, status: int, path: str):
        super().__init__(f"HTTP {status} for {path}")
        self.status = status
        self.path = path


class Imds:
    def __init__(self, base_url: str = "http://169.254.169.254", *, timeout: float = 2.0,
                 policy: RetryPolicy = RetryPolicy(attempts=3, base_delay=0.5),
                 sleep: Callable[[float], None] = time.sleep):
        u = urllib.parse.urlsplit(base_url)
        if u.scheme != "http" or not u.hostname:
            raise HaError(f"IMDS URL {base_url!r}: must be http://HOST[:PORT]", code="config")
        self.base_url = base_url.rstrip("/")
        self.host = u.hostname
        self.port = u.port or 80
        self.timeout = timeout
        self.policy = policy
        self.sleep = sleep
        self._token: str | None = None
        self.retries = 0  # counted, for the report

    # ------------------------------------------------------------ HTTP
    def _http(self, method: str, path: str, headers: dict[str, str]) -> str:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, headers=headers)
            resp = conn.getresponse()
            body = resp.read(1 << 20)
            if resp.status != 200:
                raise _Status(resp.status, path)
            return body.decode("utf-8", "replace")
        finally:
            conn.close()

    def _classify(self, exc: BaseException) -> HaError | None:
        where = f"IMDS at {self.base_url}"
        if isinstance(exc, _Status):
            if exc.status == 404:
                return HaError(f"{where} has no {exc.path}", code="not_found")
            if exc.status == 401:
                return HaError(f"{where} refused the session token (HTTP 401)", code="unauthorized")
            if exc.status == 403:
                return HaError(f"{where} refused the request (HTTP 403: IMDS disabled or IMDSv2 tokens "
                               "blocked for this instance)", code="forbidden")
            return HaError(f"{where} answered HTTP {exc.status} for {exc.path}", code="http_error")
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return HaError(f"{where} did not answer within {self.timeout:g} s (unreachable; in a container "
                           "the hop limit may be too small)", code="unreachable")
        if isinstance(exc, (OSError, http.client.HTTPException)):
            what = getattr(exc, "strerror", None) or type(exc).__name__
            return HaError(f"{where} unreachable: {what}", code="unreachable")
        return None

    def _retry(self, call: Callable[[], str], what: str) -> str:
        def count(_err: HaError, _n: int) -> None:
            self.retries += 1

        result, _ = with_retries(call, self.policy, what=what, classify=self._classify,
                                 retryable=lambda e: e.code in ("unreachable", "http_error"),
                                 sleep=self.sleep, on_retry=count)
        return result

    def token(self) -> str:
        if self._token is None:
            self._token = self._retry(
                lambda: self._http("PUT", TOKEN_PATH, {"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL)}),
                "IMDSv2 token").strip()
        return self._token

    def get(self, path: str) -> str:
        """``path`` under ``/latest/meta-data/``; a refused (expired) token is renewed once."""
        full = META + path.lstrip("/")
        try:
            return self._retry(lambda: self._http("GET", full, {"X-aws-ec2-metadata-token": self.token()}),
                               f"IMDS {path}")
        except HaError as e:
            if e.code != "unauthorized":
                raise
            self._token = None
            return self._retry(lambda: self._http("GET", full, {"X-aws-ec2-metadata-token": self.token()}),
                               f"IMDS {path}")

    # ------------------------------------------------------------ what the takeover needs
    def identity(self) -> InstanceIdentity:
        region = self.get("placement/region").strip()
        instance = self.get("instance-id").strip()
        mac = self.get("mac").strip()
        eni = self.get(f"network/interfaces/macs/{mac}/interface-id").strip()
        try:
            az = self.get("placement/availability-zone").strip()
        except HaError:
            az = None
        return InstanceIdentity(region=region, instance_id=instance, mac=mac, interface_id=eni,
                                availability_zone=az)

    def credentials(self) -> Credentials | None:
        """The instance role's credentials; None when the instance has no role."""
        try:
            roles = self.get("iam/security-credentials/").split()
        except HaError as e:
            if e.code == "not_found":
                return None
            raise
        if not roles:
            return None
        role = roles[0].strip("/")
        raw = self.get(f"iam/security-credentials/{role}")
        try:
            doc = json.loads(raw)
            if doc.get("Code", "Success") != "Success":
                raise HaError(f"IMDS: credentials of role {role}: {doc.get('Code')}", code="credentials")
            return Credentials(access_key=doc["AccessKeyId"], secret_key=doc["SecretAccessKey"],
                               token=doc.get("Token"), expiration=doc.get("Expiration"),
                               source=f"instance role {role}")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise HaError(f"IMDS: credentials of role {role} are not the expected JSON document",
                          code="credentials") from None
