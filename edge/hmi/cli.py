"""`edge-hmi`: the operator's page, in its own process beside the daemon.

  edge-hmi --config hmi.yaml                      serve the page (http://127.0.0.1:8088/ by default)
  edge-hmi --check-config hmi.yaml                check the config and the password file, then exit
  edge-hmi passwd FILE NAME --role inspector      add a user or change a password (asked twice, or
                                                  one line on stdin with --password-stdin)

A fault here never touches inspection: the page reads the daemon's journal read-only, its
audit/collect folders and its retained MQTT status. Exit status: 0 stopped cleanly, 2 bad
config, password file or usage.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from pathlib import Path

from edge.config_file import ConfigError
from edge.hmi.config import HmiConfig, load
from edge.hmi.users import ROLES, UsersError, read_users, set_password
from edge.ops.logs import setup

log = logging.getLogger("edge.hmi")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-hmi", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="the page's config (demo/hmi.yaml is an example)")
    p.add_argument("--check-config", type=Path, metavar="FILE", help="validate FILE and its users_file, then exit")
    return p


def passwd_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-hmi passwd", description="add a user or change a password")
    p.add_argument("file", type=Path, help="the password file (users_file in the config); created 0600")
    p.add_argument("name")
    p.add_argument("--role", choices=ROLES, required=True)
    p.add_argument("--password-stdin", action="store_true", help="read the password from one line on stdin")
    return p


def _passwd(argv: list[str]) -> int:
    args = passwd_parser().parse_args(argv)
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            print("edge-hmi passwd: the two passwords differ", file=sys.stderr)
            return 2
    try:
        what = set_password(args.file, args.name, args.role, password)
    except (UsersError, OSError) as exc:
        print(f"edge-hmi passwd: {exc}", file=sys.stderr)
        return 2
    print(f"{args.file}: {args.name} ({args.role}) {what}")
    return 0


def _load(path: Path) -> tuple[HmiConfig, dict] | None:
    try:
        cfg = load(path)
        users = read_users(cfg.users_file)
    except (ConfigError, UsersError) as exc:
        print(str(exc), file=sys.stderr)
        return None
    return cfg, users


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["passwd"]:
        return _passwd(argv[1:])
    args = build_parser().parse_args(argv)
    if args.check_config is not None:
        loaded = _load(args.check_config)
        if loaded is None:
            return 2
        print(f"{args.check_config}: OK ({len(loaded[1])} users)")
        return 0
    if args.config is None:
        build_parser().print_usage(sys.stderr)
        print("edge-hmi: --config FILE is needed (see demo/hmi.yaml)", file=sys.stderr)
        return 2
    setup("INFO")  # before the users file is read: its warnings are log lines too
    for h in logging.getLogger().handlers:
        h.addFilter(_no_colour)
    loaded = _load(args.config)
    if loaded is None:
        return 2
    cfg, users = loaded
    logging.getLogger().setLevel(cfg.log_level)
    return serve(cfg, users)


def _no_colour(record: logging.LogRecord) -> bool:
    """uvicorn attaches an ANSI-coloured copy of each message; the log line has the plain one."""
    record.__dict__.pop("color_message", None)
    return True


def serve(cfg: HmiConfig, users: dict) -> int:
    # the hmi extra, imported here: --check-config and passwd work without it
    import uvicorn

    from edge.hmi.server import create_app
    from edge.hmi.state import build

    lst = cfg.listen
    for f in (lst.cert_file, lst.key_file):
        if f is not None and not f.is_file():
            print(f"{f}: listen TLS file not found", file=sys.stderr)
            return 2
    try:
        hmi = build(cfg, users)
    except OSError as exc:
        print(f"edge-hmi: state_dir {cfg.state_dir}: {exc}", file=sys.stderr)
        return 2
    scheme = "https" if lst.tls else "http"
    if lst.host not in ("127.0.0.1", "::1", "localhost") and not lst.tls:
        log.warning("the page listens beyond this box without TLS: passwords cross the network in clear",
                    extra={"host": lst.host})
    log.info("serving the operator page", extra={"url": f"{scheme}://{lst.host}:{lst.port}/", "users": len(users)})
    config = uvicorn.Config(create_app(hmi), host=lst.host, port=lst.port, log_config=None, access_log=False,
                            ssl_certfile=str(lst.cert_file) if lst.cert_file else None,
                            ssl_keyfile=str(lst.key_file) if lst.key_file else None,
                            timeout_graceful_shutdown=3, server_header=False)
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 2


if __name__ == "__main__":
    sys.exit(main())
