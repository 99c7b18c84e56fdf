"""The `mediaserver` command: parse arguments, load settings, configure logging, run.

Every command reads the same settings as `serve` (so `--config`, `.env` and MEDIASERVER_* apply).
With `--json` a command prints exactly one JSON document on stdout (a list for list commands, an
object otherwise, ids under `id`); logs and errors go to stderr. Exit codes: 0 ok, 1 a command
failed (unknown id, conflict), 2 bad usage or a bad setting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from config import SettingsError, load_settings
from config.loading import LoadedSettings
from config.settings import Settings
from mediaserver import admin, inspect
from mediaserver.errors import ServerFailed, StartupError
from mediaserver.logs import configure_logging
from mediaserver.store import StoreError

# Command-line flags that set a setting: flag dest -> ("section.field", "--flag").
SETTING_FLAGS = {
    "host": ("server.host", "--host"),
    "port": ("server.port", "--port"),
    "public_url": ("server.public_url", "--public-url"),
    "workers": ("server.workers", "--workers"),
    "store": ("store.path", "--store"),
    "log_level": ("log.level", "--log-level"),
    "log_format": ("log.format", "--log-format"),
    "debug_socket": ("debug.socket_path", "--debug-socket"),
}


class UsageError(Exception):
    """Bad command-line usage that argparse cannot see (exit code 2)."""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="TOML settings file", default=None)
    common.add_argument("--store", metavar="PATH", help="SQLite file (store.path)")
    common.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    common.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    common.add_argument("--log-format", choices=["human", "json"])
    scoped = argparse.ArgumentParser(add_help=False)
    scoped.add_argument(
        "--company", metavar="ID", help="company id (default: the only company, if just one)"
    )

    parser = argparse.ArgumentParser(
        prog="mediaserver",
        description="Actor-model real-time voice media server.",
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _add_serve(commands, common)

    company = _group(commands, "company", "manage companies (tenants)")
    create = company.add_parser("create", parents=[common], help="create a company and its key")
    create.add_argument("name")
    company.add_parser("list", parents=[common], help="list companies")

    key = _group(commands, "key", "manage API keys")
    create = key.add_parser("create", parents=[common, scoped], help="create an API key")
    create.add_argument("--label", default="")
    revoke = key.add_parser("revoke", parents=[common, scoped], help="revoke an API key")
    revoke.add_argument("key_id")
    key.add_parser("list", parents=[common, scoped], help="list API keys (never the secret)")

    agent = _group(commands, "agent", "manage agents")
    for name, help_text in (("create", "create an agent"), ("update", "update an agent")):
        sub = agent.add_parser(name, parents=[common, scoped], help=help_text)
        if name == "update":
            sub.add_argument("agent_id")
        admin.add_agent_flags(sub)
    agent.add_parser("list", parents=[common, scoped], help="list agents")
    show = agent.add_parser("show", parents=[common, scoped], help="show one agent")
    show.add_argument("agent_id")

    number = _group(commands, "number", "route phone numbers to agents")
    add = number.add_parser("add", parents=[common, scoped], help="route an E.164 number")
    add.add_argument("number")
    add.add_argument("--agent", metavar="ID", help="agent id (default: the company's default)")
    number.add_parser("list", parents=[common, scoped], help="list numbers")
    remove = number.add_parser("remove", parents=[common, scoped], help="remove a number")
    remove.add_argument("number")

    calls = _group(commands, "calls", "inspect stored calls")
    listing = calls.add_parser("list", parents=[common, scoped], help="list calls, newest first")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--offset", type=int, default=0)
    show = calls.add_parser("show", parents=[common, scoped], help="a call with its transcript")
    show.add_argument("call_id")

    config = _group(commands, "config", "settings")
    config.add_parser("show", parents=[common], help="effective settings and their sources")

    inspect.add_parser(commands, common)

    commands.add_parser(
        "doctor",
        parents=[common],
        help="check the store, port, offline models, provider keys and browser-test tools",
    )
    return parser


def _add_serve(commands: Any, common: argparse.ArgumentParser) -> None:
    serve = commands.add_parser("serve", parents=[common], help="run the server")
    serve.add_argument("--host", help="listen address (server.host)")
    serve.add_argument("--port", type=int, help="listen port, 0 = any free port (server.port)")
    serve.add_argument("--public-url", help="public https URL (server.public_url)")
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes (server.workers; 0 = one per usable CPU, 1 = a single process)",
    )
    serve.add_argument("--debug-socket", metavar="PATH", help="debug socket (debug.socket_path)")


def _group(commands: Any, name: str, help_text: str) -> Any:
    group = commands.add_parser(name, help=help_text)
    return group.add_subparsers(dest="action", metavar="ACTION", required=True)


def load(args: argparse.Namespace) -> LoadedSettings:
    overrides = {}
    names = {}
    for dest, (path, flag) in SETTING_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides[path] = value
            names[path] = flag
    return load_settings(config_file=args.config, overrides=overrides, flag_names=names)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        loaded = load(args)
    except SettingsError as exc:
        fail(str(exc), code=2)
    configure_logging(loaded.settings.log)
    try:
        if args.command == "serve":
            return serve(loaded.settings)
        if args.command == "inspect":
            return inspect.run(args, loaded.settings)
        return run_admin(args, loaded)
    except StartupError as exc:
        fail(str(exc), code=2)
    except ServerFailed as exc:
        fail(str(exc), code=1)
    except UsageError as exc:
        fail(str(exc), code=2)
    except StoreError as exc:
        fail(str(exc), code=1)
    except KeyboardInterrupt:
        return 130


def serve(settings: Settings) -> int:
    """One process with `server.workers` 1; else the node and its workers."""
    # Imported here: admin commands stay light, and the node never loads the media stack.
    from mediaserver.node.node import run_node, worker_count  # noqa: PLC0415

    workers = worker_count(settings)
    if workers > 1:
        return asyncio.run(run_node(settings, workers=workers))
    from mediaserver.app import run_server  # noqa: PLC0415

    return asyncio.run(run_server(settings))


def run_admin(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    command = f"{args.command} {getattr(args, 'action', '')}".strip()
    if command == "config show":
        return emit(args, admin.config_rows(loaded), admin.render_config)
    if command == "doctor":
        result = asyncio.run(admin.doctor(loaded.settings))
        emit(args, result, admin.render_doctor)
        return 0 if all(check["ok"] or not check["required"] for check in result["checks"]) else 1
    handler = admin.COMMANDS.get(command)
    if handler is None:
        raise UsageError(f"unknown command: {command}")
    document, render = asyncio.run(handler(args, loaded.settings))
    return emit(args, document, render)


def emit(args: argparse.Namespace, document: Any, render: Callable[[Any], str]) -> int:
    if args.json:
        print(json.dumps(document, indent=2, default=str))
    else:
        print(render(document))
    return 0


def fail(message: str, *, code: int) -> NoReturn:
    print(f"mediaserver: {message}", file=sys.stderr)
    raise SystemExit(code)
