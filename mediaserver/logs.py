"""Logging set-up: the one place that installs handlers (called by `cli.py`).

Human format by default, JSON lines with `--log-format json`. Records go to stderr, so commands
that print `--json` keep stdout to exactly one document. A record of a call carries `call_id`
(set by the `LoggerAdapter` each call creates), and both formats show it.

Secrets and audio stay out: code logs sizes and key prefixes, never payloads (STYLE.md §9), and
as a last guard `RedactSecrets` masks anything shaped like an API key, a webhook secret or a
bearer token in the final message, and an extra field holding bytes is logged as its length.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, TextIO

from config.settings import LogSettings

# uvicorn adds `color_message`, its message with terminal colour codes: not for a JSON line.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}
# API keys keep their public prefix (it names the key); everything secret after it is masked.
_SECRETS = (
    (re.compile(r"\b(msk_[a-z0-9]{8}_)[A-Za-z0-9_-]+"), r"\1***"),
    (re.compile(r"\bwhsec_[A-Za-z0-9_-]+"), "whsec_***"),
    (re.compile(r"\b(Bearer\s+)[^\s'\",]+", re.IGNORECASE), r"\1***"),
)


def redact(text: str) -> str:
    """`text` with API keys, webhook secrets and bearer tokens masked."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """Masks secrets in a record's final message (installed on the handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def _field(value: object) -> int | float | str | bool:
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"  # audio or any payload: its size, never its content
    return value if isinstance(value, int | float | str | bool) else redact(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, call_id and any extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 6),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = _field(value)
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


class StampWorker(logging.Filter):
    """Adds `worker` (the node's worker number) to every record of a worker process."""

    def __init__(self, worker: int) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        return True


class HumanFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.exc_info:
            text = redact(text)  # a traceback may quote a secret; the message is already clean
        call_id = getattr(record, "call_id", None)
        text = f"{text} [call {call_id}]" if call_id else text
        worker = getattr(record, "worker", None)
        return f"{text} [worker {worker}]" if worker is not None else text


def configure_logging(
    settings: LogSettings, *, stream: TextIO | None = None, worker: int | None = None
) -> None:
    """Install one stderr handler on the root logger, replacing any earlier one.

    In a node's worker process, `worker` (its number) is added to every record.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else HumanFormatter())
    handler.addFilter(RedactSecrets())
    if worker is not None:
        handler.addFilter(StampWorker(worker))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level)
    # Libraries that log per packet or per request stay quiet unless asked.
    for noisy in ("aioice", "aiortc", "uvicorn.access", "httpx", "httpcore", "websockets"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


class CallLogger(logging.LoggerAdapter[logging.Logger]):
    """Adds `call_id` to every record of one call."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = dict(kwargs.get("extra") or {})
        extra.update(self.extra or {})
        kwargs["extra"] = extra
        return msg, kwargs
