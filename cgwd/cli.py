"""cgwctl: the operator's command line for cgwd.

Exit codes: 0 success, 1 failure (invalid config, command refused), 2 usage error,
3 the daemon is not running or its socket is not accessible.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__
from .paths import DEFAULT_CONFIG, DEFAULT_SOCKET

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3

DESCRIPTION = """\
Control and inspect cgwd, the customer-gateway daemon for AWS Site-to-Site VPN.

commands:
  status [--json]        tunnels, IKE/ESP SAs, DPD, BGP sessions, learned routes and
                         what is missing (exit 3 if cgwd is not running)
  up TUNNEL              bring a tunnel up (initiate IKE now)
  down TUNNEL            tear a tunnel down and keep it down until `up`
  rekey TUNNEL [--ike]   negotiate a new IPsec SA pair for a tunnel now (no waiting an hour);
                         --ike: a new IKE SA instead (IKEv1: re-authentication)
  reload                 re-read the config file; only changed tunnels restart
  config check FILE      validate a config file, print every problem at once
  import aws FILE ...    turn an AWS VPN configuration download into a cgwd config
  lab ...                the built-in lab (strongSwan + BIRD playing AWS)
  health [--strict]      exit 0 up / 0 degraded (1 strict) / 1 down / 2 no cgwd: keepalived's
                         track_script, with one line saying why
  ha notify|check|status|keepalived
                         high availability: keepalived notify hooks (the EC2 route-table
                         takeover on MASTER), checks, the last transition, keepalived.conf
"""

EPILOG = f"""\
examples:
  cgwctl import aws vpn-0123.xml --advertise 10.200.0.0/24 -o /etc/cgwd/cgwd.toml
  cgwctl config check /etc/cgwd/cgwd.toml && systemctl reload cgwd
  cgwctl status
  cgwctl rekey tun1

The control socket is {DEFAULT_SOCKET} (mode 0600: run cgwctl as root).
"""

IMPORT_HELP = """\
Read what AWS hands out for a VPN connection and write a cgwd config (mode 0600):
  * the CustomerGatewayConfiguration XML (DescribeVpnConnections),
  * `aws ec2 describe-vpn-connections` JSON (every connection becomes a [[vpn]]),
  * the console's "Download configuration" for Generic, Yamaha RTX, Cisco IOS/ASA.
The format is detected automatically.  FILE may be - for standard input.

IKE version: the JSON's IkeVersions (IKEv2 whenever AWS allows it), the Generic download's
"IKE version" line, Yamaha's `ipsec ike version N 2`, Cisco's `crypto ikev2`; the XML says
none, so it gives IKEv1 unless --ike-version 2 is passed.  The JSON's tunnel options (every
algorithm, lifetime, rekey, replay and DPD setting, StartupAction) are read as they are.

Static routing (no BGP): give the VPC's CIDRs with --static-route (repeatable); a static
download without one fails and says so.  IPv6 VPN connections (/126 inside CIDRs, IPv6
outside addresses) import like IPv4 ones.
"""


def _err(msg: str) -> None:
    print(f"cgwctl: {msg}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cgwctl", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--version", action="version", version=f"cgwctl {__version__}")
    p.add_argument("--socket", default=None, help=f"control socket of cgwd (default {DEFAULT_SOCKET}, or $CGWD_SOCKET)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for cgwd's answer (default 10)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def sock_opt(sp):
        sp.add_argument("--socket", default=argparse.SUPPRESS, help="control socket of cgwd")

    sp = sub.add_parser("status", help="show tunnels, SAs, BGP and routes", description="Show every tunnel: outside addresses and NAT, IKE state and algorithms, time to rekey, ESP SPIs and counters, DPD, BGP state, prefixes, learned routes, and what is missing.")
    sp.add_argument("--json", action="store_true", help="print the daemon's status as JSON, unchanged")
    sock_opt(sp)
    for name, what in (("up", "bring TUNNEL up now"), ("down", "take TUNNEL down (until `up`)"), ("rekey", "negotiate a new IPsec (phase 2) SA pair for TUNNEL now")):
        sp = sub.add_parser(name, help=what, description=what[0].upper() + what[1:] + ".")
        sp.add_argument("tunnel", metavar="TUNNEL", help="tunnel name as in the config ([[vpn.tunnel]] name)")
        if name == "rekey":
            sp.add_argument("--ike", action="store_true", help="a new IKE (phase 1) SA instead: IKEv2 rekeys it, IKEv1 re-authenticates (a new main mode)")
        sock_opt(sp)
    sp = sub.add_parser("reload", help="re-read the config; restart only changed tunnels", description="Ask cgwd to re-read its config file (like systemctl reload cgwd). Tunnels whose settings did not change keep running.")
    sock_opt(sp)

    sp = sub.add_parser("config", help="configuration tools", description="Configuration tools.")
    csub = sp.add_subparsers(dest="config_cmd", metavar="SUBCOMMAND")
    cp = csub.add_parser("check", help="validate a config file", description="Validate FILE; print 'OK: N VPN connection(s), M tunnel(s)' and any warnings, or every error (exit 1).")
    cp.add_argument("file", metavar="FILE", nargs="?", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")

    sp = sub.add_parser("import", help="import an AWS configuration download", description="Import configurations.")
    isub = sp.add_subparsers(dest="import_cmd", metavar="SOURCE")
    ip = isub.add_parser("aws", help="AWS XML/JSON/Generic/Yamaha/Cisco download -> cgwd TOML", description=IMPORT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    ip.add_argument("file", metavar="FILE", help="the downloaded file, or - for standard input")
    ip.add_argument("--local-address", metavar="IP", help="this box's own outside address when it sits behind NAT (the address in the file becomes public_address)")
    ip.add_argument("--advertise", metavar="CIDR", action="append", default=[], help="on-prem prefix to announce over BGP (repeatable; BGP VPN connections)")
    ip.add_argument("--static-route", metavar="CIDR", action="append", default=[], dest="static_routes", help="the VPC's CIDR to route into the tunnels of a static VPN connection (repeatable; required for static downloads)")
    ip.add_argument("--ike-version", metavar="N", type=int, choices=(1, 2), help="IKE version of every tunnel (1 or 2), e.g. 2 for the XML, which says none (default: what the download says; IKEv1 when it says nothing)")
    ip.add_argument("--name", metavar="NAME", help="name of the VPN connection in the config (default: the vpn-... id); tunnels become NAME-1, NAME-2")
    ip.add_argument("--merge", metavar="EXISTING", help="add the connection to this existing config, keeping its text unchanged; written back in place unless -o is given")
    ip.add_argument("-o", "--output", metavar="OUT", help="write the config here (mode 0600); '-' writes to standard output (it contains the pre-shared keys)")

    lp = sub.add_parser("lab", help="the built-in lab (see `cgwctl lab --help`)", add_help=False)
    lp.add_argument("lab_args", nargs=argparse.REMAINDER)

    from .ha.cli import add_parsers as add_ha_parsers

    add_ha_parsers(sub, sock_opt)
    return p


def _socket_path(args) -> str:
    return args.socket or os.environ.get("CGWD_SOCKET") or DEFAULT_SOCKET


def _request(args, req: dict) -> tuple[int, dict | None]:
    from .control_client import ControlClient, ControlUnavailable

    try:
        return EXIT_OK, ControlClient(_socket_path(args)).request(req, timeout=args.timeout)
    except ControlUnavailable as e:
        _err(str(e))
        return EXIT_UNAVAILABLE, None


def cmd_status(args) -> int:
    rc, resp = _request(args, {"cmd": "status"})
    if resp is None:
        return rc
    if not resp.get("ok"):
        _err(resp.get("error", "status failed"))
        return EXIT_FAIL
    status = resp.get("status") or {}
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=False))
    else:
        from .status_format import format_status

        sys.stdout.write(format_status(status))
    return EXIT_OK


def cmd_simple(args, req: dict) -> int:
    rc, resp = _request(args, req)
    if resp is None:
        return rc
    if not resp.get("ok"):
        _err(resp.get("error", f"{req['cmd']} failed"))
        return EXIT_FAIL
    msg = resp.get("message") or f"{req['cmd']}: ok"
    print(msg)
    for w in resp.get("warnings") or []:
        print(f"warning: {w}", file=sys.stderr)
    return EXIT_OK


def cmd_config_check(args) -> int:
    from .config import ConfigError, load_config

    try:
        cfg = load_config(args.file)
    except ConfigError as e:
        for issue in e.errors:
            print(str(issue), file=sys.stderr)
        n = len(e.errors)
        print(f"{n} error{'s' if n != 1 else ''}", file=sys.stderr)
        return EXIT_FAIL
    print(f"OK: {len(cfg.vpns)} VPN connection(s), {len(cfg.tunnels)} tunnel(s)")
    for w in cfg.warnings:
        print(f"warning: {w}")
    return EXIT_OK


def cmd_import_aws(args) -> int:
    from .aws_import import FORMAT_NAMES, AwsImportError, import_aws, write_private

    try:
        if args.file == "-":
            text = sys.stdin.read()
            src = "<stdin>"
        else:
            with open(args.file, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
            src = args.file
    except OSError as e:
        _err(f"{args.file}: {e.strerror}")
        return EXIT_FAIL
    out = args.output or args.merge
    if not out:
        _err("say where to write the config: -o FILE (written mode 0600), or -o - for standard output (it contains the pre-shared keys)")
        return EXIT_USAGE
    merge_text = None
    if args.merge:
        try:
            with open(args.merge, encoding="utf-8") as fh:
                merge_text = fh.read()
        except OSError as e:
            _err(f"{args.merge}: {e.strerror}")
            return EXIT_FAIL
    try:
        res = import_aws(
            text, local_address=args.local_address, advertise=args.advertise, name=args.name,
            merge_text=merge_text, merge_source=args.merge or "<existing>",
            static_routes=args.static_routes, ike_version=args.ike_version,
        )
    except AwsImportError as e:
        _err(f"{src}: {e}")
        return EXIT_FAIL
    print(f"detected: {FORMAT_NAMES.get(res.fmt, res.fmt)}", file=sys.stderr)
    for line in res.summary:
        print(line, file=sys.stderr)
    for line in res.notes:
        print(f"note: {line}", file=sys.stderr)
    if out == "-":
        sys.stdout.write(res.text)
        return EXIT_OK
    try:
        write_private(out, res.text)
    except OSError as e:
        _err(f"{out}: {e.strerror}")
        return EXIT_FAIL
    what = "merged into" if args.merge and out == args.merge else "wrote"
    print(f"{what} {out} (mode 0600); check it with: cgwctl config check {out}", file=sys.stderr)
    if not args.advertise and not all(v.static for v in res.vpns):
        print("note: no --advertise given: set advertise = [...] to announce your on-prem prefixes", file=sys.stderr)
    return EXIT_OK


def cmd_lab(argv: list[str]) -> int:
    try:
        from .lab.cli import main as lab_main  # written separately; imported only when used
    except ImportError as e:
        _err(f"the lab is not available in this installation ({e})")
        return EXIT_FAIL
    rc = lab_main(argv)
    return int(rc or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `lab` owns everything after it, including --help
    for i, a in enumerate(argv):
        if a == "lab":
            return cmd_lab(argv[i + 1 :])
        if not a.startswith("-"):
            break
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "status":
            return cmd_status(args)
        if args.command in ("up", "down"):
            return cmd_simple(args, {"cmd": args.command, "tunnel": args.tunnel})
        if args.command == "rekey":
            return cmd_simple(args, {"cmd": "rekey", "tunnel": args.tunnel, **({"sa": "ike"} if args.ike else {})})
        if args.command == "reload":
            return cmd_simple(args, {"cmd": "reload"})
        if args.command in ("health", "ha"):
            from .ha import cli as ha_cli

            if args.command == "health":
                return ha_cli.cmd_health(args, _socket_path(args))
            return ha_cli.cmd_ha(args, parser)
        if args.command == "config":
            if args.config_cmd == "check":
                return cmd_config_check(args)
            parser.parse_args(["config", "--help"])
        if args.command == "import":
            if args.import_cmd == "aws":
                return cmd_import_aws(args)
            parser.parse_args(["import", "--help"])
        parser.print_help()
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
