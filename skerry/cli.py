"""The ``skerry`` command line."""

import argparse
import sys

from . import __version__
from .errors import SkerryError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skerry", description="Jupyter-centric data infrastructure.")
    p.add_argument("--version", action="version", version=f"skerry {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="run the whole platform on this machine, in the foreground")
    up.add_argument("--data-dir", default="./skerry-data", help="where state lives (default ./skerry-data)")
    up.add_argument("--ip", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    up.add_argument("--dev", action="store_true",
                    help="INSECURE: let any user name and password log in (for local development)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "up":
            from .platform import Options, up

            return up(Options(data_dir=args.data_dir, ip=args.ip, port=args.port, dev=args.dev))
    except SkerryError as e:
        print(f"skerry: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
