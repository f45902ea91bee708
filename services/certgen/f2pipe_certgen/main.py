"""`f2pipe certgen [--host H] [--port P] [--bootstrap-only]`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from f2pipe_certgen.service import run


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="f2pipe certgen",
        description="the certificate authority's HTTP API (enrolment, revocation, CRL)",
    )
    p.add_argument("--host", help="listen address (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="listen port (default CERTGEN_API_PORT)")
    p.add_argument(
        "--bootstrap-only",
        action="store_true",
        help="create the CA, broker and service certificates if missing, then exit",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run(host=args.host, port=args.port, bootstrap_only=args.bootstrap_only)
