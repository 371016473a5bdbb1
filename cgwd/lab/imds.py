"""An IMDSv2 responder for the lab and the tests: what an EC2 instance's metadata service
answers about itself, token first.

``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds`` gives a token;
every GET needs it in ``X-aws-ec2-metadata-token`` (IMDSv2 only: 401 without it, as an
instance with ``HttpTokens=required`` answers). Serves ``placement/region``,
``placement/availability-zone``, ``instance-id``, ``mac``,
``network/interfaces/macs/<mac>/interface-id`` and ``iam/security-credentials/[<role>]``.

Run in a lab namespace on 169.254.169.254 (``python -m cgwd.lab.imds --listen
169.254.169.254:80 --document FILE``), or on loopback from a unit test (:class:`ImdsResponder`).
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

META = "/latest/meta-data/"


class ImdsResponder:
    """``doc``: region, instance_id, mac, interface_id, optional availability_zone, role and
    credentials ({AccessKeyId, SecretAccessKey, Token, Expiration}). ``fail_first``: answer
    HTTP 503 to that many requests first (a transient failure to retry). Counts requests."""

    def __init__(self, doc: dict, host: str = "127.0.0.1", port: int = 0, *, fail_first: int = 0):
        self.doc = doc
        self.fail_first = fail_first
        self.tokens: set[str] = set()
        self.requests: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_PUT(self):
                outer._serve(self, "PUT")

            def do_GET(self):
                outer._serve(self, "GET")

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def routes(self) -> dict[str, str]:
        d = self.doc
        out = {
            "placement/region": d["region"],
            "placement/availability-zone": d.get("availability_zone", d["region"] + "a"),
            "instance-id": d["instance_id"],
            "mac": d["mac"],
            f"network/interfaces/macs/{d['mac']}/interface-id": d["interface_id"],
        }
        if d.get("role"):
            out["iam/security-credentials/"] = d["role"]
            cred = {"Code": "Success", "Type": "AWS-HMAC", **d.get("credentials", {})}
            out[f"iam/security-credentials/{d['role']}"] = json.dumps(cred)
        return out

    def _serve(self, h: BaseHTTPRequestHandler, method: str) -> None:
        with self._lock:
            fail = self.fail_first > 0
            if fail:
                self.fail_first -= 1
        status, body = (503, "") if fail else self._answer(h, method)
        with self._lock:
            self.requests.append((method, h.path, status))
        data = body.encode()
        h.send_response(status)
        h.send_header("Content-Type", "text/plain")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _answer(self, h: BaseHTTPRequestHandler, method: str) -> tuple[int, str]:
        if method == "PUT":
            if h.path != "/latest/api/token":
                return 405, ""
            ttl = h.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return 400, ""
            tok = secrets.token_urlsafe(32)
            with self._lock:
                self.tokens.add(tok)
            return 200, tok
        if h.headers.get("X-aws-ec2-metadata-token") not in self.tokens:
            return 401, ""
        if not h.path.startswith(META):
            return 404, ""
        body = self.routes().get(h.path[len(META):])
        return (200, body) if body is not None else (404, "")

    def start(self) -> "ImdsResponder":
        self._thread = threading.Thread(target=self.server.serve_forever, name="imds", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "ImdsResponder":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cgwd.lab.imds", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="169.254.169.254:80", help="HOST:PORT (default %(default)s)")
    p.add_argument("--document", required=True, help="JSON file: region, instance_id, mac, interface_id, role, credentials")
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    with open(args.document) as f:
        doc = json.load(f)
    r = ImdsResponder(doc, host, int(port)).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(f"imds: serving {doc.get('instance_id')} on {r.url}", flush=True)
    done.wait()
    r.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
