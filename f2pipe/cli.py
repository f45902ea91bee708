"""`f2pipe`: one command, a subcommand per service and per operations task.

Every service is a package `f2pipe_<name>` whose `main` module has `main(argv) -> int` and
parses its own arguments; it is imported only when it runs, so `f2pipe --help` stays fast.
Development commands (`dev`, `bench`) are not part of this package: `f2pipe-devtools`
registers them through the `f2pipe.commands` entry point group, so they exist where it is
installed (`make setup`) and nowhere else (the image).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path

from f2pipe_shared.dblogin import LoginRefused
from f2pipe_shared.settings import SettingsError

Handler = Callable[[argparse.Namespace], int]
PLUGIN_GROUP = "f2pipe.commands"  # each entry point: register(subparsers) -> None

SERVICES = {
    "certgen": "the certificate authority's HTTP API (enrolment, revocation, CRL)",
    "bridge": "MQTT stat/tele -> Kafka raw-iot-data, acknowledged after Kafka confirmed",
    "processor": "Faust stream processor: raw-iot-data -> processed-iot-data",
    "sink": "batched, idempotent processed-iot-data -> TimescaleDB writer",
    "simulator": "simulated F2 controllers (enrol, publish, answer commands); --load",
    "api": "the control plane's HTTP API: controllers, tokens, audit log (docs/api.md)",
}


# The services that log into PostgreSQL, and which database: the registry (POSTGRES_*) or
# the telemetry database (TIMESCALE_*, each unset one taking its POSTGRES_* twin).
DATABASE_OF = {"certgen": "registry", "processor": "registry", "simulator": "registry",
               "sink": "telemetry", "api": "registry"}  # fmt: skip


def _service(name: str) -> Handler:
    def run(args: argparse.Namespace) -> int:
        if name in DATABASE_OF and not {"-h", "--help"} & set(args.argv):
            _check_login(name)
        main: Callable[[Sequence[str]], int] = importlib.import_module(f"f2pipe_{name}.main").main
        return main(args.argv)

    return run


def _check_login(service: str) -> None:
    """One login before the service starts: refused credentials stop it at once, with the
    settings named (LoginRefused). A server that is down is the service's to wait for."""
    from f2pipe_shared import settings as s
    from f2pipe_shared.dblogin import check_login, registry_login, telemetry_login

    postgres = s.load(s.PostgresSettings)
    if DATABASE_OF[service] == "telemetry":
        login = telemetry_login(s.load(s.TimescaleSettings), postgres)
    else:
        login = registry_login(postgres)
    check_login(login, application_name=f"f2pipe-{service}")


def _migrate(args: argparse.Namespace) -> int:
    from f2pipe.commands import migrate

    return migrate(conninfo=args.conninfo, directory=args.directory)


def _db_check(args: argparse.Namespace) -> int:
    from f2pipe.commands import db_check

    return db_check(conninfo=args.conninfo, directory=args.directory)


def _seed_demo(args: argparse.Namespace) -> int:
    from f2pipe.commands import seed_demo

    return seed_demo(
        conninfo=args.conninfo, controllers=args.controllers, claim_codes=args.claim_codes
    )


def _db_roles(args: argparse.Namespace) -> int:
    from f2pipe.commands import db_roles

    return db_roles(conninfo=args.conninfo)


def _api_token(args: argparse.Namespace) -> int:
    from f2pipe import commands

    if args.action == "create":
        return commands.api_token_create(args.conninfo, args.name, args.role, args.expires)
    if args.action == "list":
        return commands.api_token_list(args.conninfo)
    return commands.api_token_revoke(args.conninfo, args.name)


def _broker_config(args: argparse.Namespace) -> int:
    from f2pipe.brokerconfig import main as broker_config_main

    return broker_config_main(args)


def _config_doc(args: argparse.Namespace) -> int:
    from f2pipe.configdoc import render

    text = render()
    if args.write:
        args.write.write_text(text)
    else:
        print(text, end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="f2pipe", description="Secure ingestion pipeline for F2 Smart Controllers."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, help_text in SERVICES.items():
        # Listed for `f2pipe --help` only: main() hands a service its arguments before
        # argparse sees them, and `f2pipe <service> --help` shows the service's own options.
        sub.add_parser(name, help=help_text, add_help=False)

    p = sub.add_parser("migrate", help="apply the SQL migrations (safe to run again)")
    p.add_argument("--conninfo", help="libpq conninfo; default: POSTGRES_*/TIMESCALE_* settings")
    p.add_argument(
        "--directory", type=Path, help="migrations directory (default: the ones f2pipe ships)"
    )
    p.set_defaults(handler=_migrate)

    p = sub.add_parser(
        "db-check",
        help="migrations up to date? how did each TimescaleDB job's last run end? (exit 1 if not)",
    )
    p.add_argument("--conninfo", help="libpq conninfo; default: POSTGRES_*/TIMESCALE_* settings")
    p.add_argument(
        "--directory", type=Path, help="migrations directory (default: the ones f2pipe ships)"
    )
    p.set_defaults(handler=_db_check)

    p = sub.add_parser("seed-demo", help="register a demo fleet (idempotent)")
    p.add_argument("--controllers", type=int, default=10, help="how many controllers (default 10)")
    p.add_argument("--conninfo", help="libpq conninfo; default: POSTGRES_* settings")
    p.add_argument(
        "--claim-codes",
        type=Path,
        metavar="PATH",
        help="write new controllers' claim codes here (mode 0600) instead of printing them",
    )
    p.set_defaults(handler=_seed_demo)

    p = sub.add_parser(
        "db-roles",
        help="create or update each service's login role (POSTGRES_<SERVICE>_USER/_PASSWORD)",
    )
    p.add_argument("--conninfo", help="libpq conninfo; default: POSTGRES_*/TIMESCALE_* settings")
    p.set_defaults(handler=_db_roles)

    p = sub.add_parser("api-token", help="create, list or revoke the api's bearer tokens")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("create", help="a new token, printed once (only its hash is kept)")
    a.add_argument("--name", required=True, help="the token's name (the audit log's actor)")
    a.add_argument("--role", required=True, choices=["viewer", "operator", "admin"])
    a.add_argument("--expires", type=float, metavar="DAYS", help="valid for DAYS (default: ever)")
    actions.add_parser("list", help="every token: name, role, dates (never a secret)")
    a = actions.add_parser("revoke", help="revoke a token by name (it stays listed)")
    a.add_argument("--name", required=True)
    for a in actions.choices.values():
        a.add_argument("--conninfo", help="libpq conninfo; default: POSTGRES_* settings")
    p.set_defaults(handler=_api_token)

    p = sub.add_parser(
        "broker-config", help="render Mosquitto's configuration and ACL for local paths and ports"
    )
    p.add_argument("--out", type=Path, required=True, help="directory to write mosquitto.conf into")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8883, help="TLS listener port (default 8883)")
    p.add_argument("--ca-dir", type=Path, help="default: CA_DIR")
    p.add_argument("--issued-dir", type=Path, help="default: ISSUED_DIR")
    p.add_argument("--data-dir", type=Path, help="persistence directory (default: OUT/data)")
    p.set_defaults(handler=_broker_config)

    p = sub.add_parser("config-doc", help="print every setting (Markdown) or --write it to a file")
    p.add_argument("--write", type=Path, metavar="PATH", help="e.g. docs/configuration.md")
    p.set_defaults(handler=_config_doc)

    for plugin in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        plugin.load()(sub)
    return parser


def _is_database_unreachable(exc: Exception) -> bool:
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(exc, psycopg.OperationalError)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SERVICES:
        # Everything after the service's name is the service's own (argparse would take a
        # leading option such as --help for f2pipe's).
        args = argparse.Namespace(command=argv[0], argv=argv[1:], handler=_service(argv[0]))
    else:
        args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except SettingsError as exc:
        print(f"f2pipe {args.command}: {exc}", file=sys.stderr)
        return 2
    except LoginRefused as exc:
        print(f"f2pipe {args.command}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"f2pipe {args.command}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if _is_database_unreachable(exc):
            print(f"f2pipe {args.command}: database unreachable: {exc}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
