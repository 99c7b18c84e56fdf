"""Read every settings source, remember where each value came from, validate once.

Precedence, lowest to highest: defaults, the TOML file given by `--config`, `.env` in the working
directory, environment variables `MEDIASERVER_<SECTION>__<FIELD>`, command-line flags.

Each source is read on its own (with pydantic-settings' own source classes) so that a bad value can
be reported with the place it came from, and `mediaserver config show` can print the origin of
every effective value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_settings import DotEnvSettingsSource, EnvSettingsSource, TomlConfigSettingsSource

from config.settings import Settings

ENV_PREFIX = "MEDIASERVER_"
DELIMITER = "__"


class SettingsError(Exception):
    """A setting has a bad value; `str()` is one line naming the field and its source."""


@dataclass(frozen=True, slots=True)
class LoadedSettings:
    settings: Settings
    origins: dict[str, str]  # "section.field" -> where the value came from ("default" if unset)


def load_settings(
    *,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    flag_names: Mapping[str, str] | None = None,
    env_file: str | Path | None = ".env",
    environ: Mapping[str, str] | None = None,
) -> LoadedSettings:
    """Build `Settings` from every source.

    Args:
        config_file: TOML file with one table per section; None for none.
        overrides: command-line values, keyed "section.field".
        flag_names: for error messages, "section.field" -> "--flag".
        env_file: the dotenv file; a missing file is no error.
        environ: the environment (defaults to `os.environ`).

    Raises:
        SettingsError: a file is unreadable, a key is unknown, or a value is invalid.
    """
    layers: list[tuple[str, dict[str, Any], dict[str, str]]] = []
    if config_file is not None:
        layers.append(_toml_layer(Path(config_file)))
    if env_file is not None and Path(env_file).is_file():
        layers.append(_dotenv_layer(Path(env_file)))
    layers.append(_env_layer(os.environ if environ is None else environ))
    if overrides:
        cli: dict[str, Any] = {}
        names: dict[str, str] = {}
        for dotted, value in overrides.items():
            section, field = dotted.split(".", 1)
            cli.setdefault(section, {})[field] = value
            names[dotted] = "flag " + (flag_names or {}).get(dotted, dotted)
        layers.append(("flags", cli, names))

    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for _, values, names in layers:
        for section, fields in values.items():
            if not isinstance(fields, dict):
                raise SettingsError(
                    f"setting {section!r} from {names.get(section, section)}: "
                    "expected a section (a TOML table or SECTION__FIELD), not a value"
                )
            target = merged.setdefault(section, {})
            for field, value in fields.items():
                target[field] = value
                origins[f"{section}.{field}"] = names.get(f"{section}.{field}", "?")
    try:
        settings = Settings(**merged)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, origins)) from None
    all_origins = {path: origins.get(path, "default") for path in _leaf_paths(settings)}
    return LoadedSettings(settings=settings, origins=all_origins)


def _toml_layer(path: Path) -> tuple[str, dict[str, Any], dict[str, str]]:
    if not path.is_file():
        raise SettingsError(f"config file {path}: no such file")
    try:
        values = TomlConfigSettingsSource(Settings, toml_file=path)()
    except (OSError, ValueError) as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise SettingsError(f"config file {path}: {exc}") from None
    names = {
        f"{section}.{field}": f"config file {path} [{section}] {field}"
        for section, fields in values.items()
        if isinstance(fields, dict)
        for field in fields
    }
    names.update({section: f"config file {path}" for section in values})
    return ("toml", values, names)


def _dotenv_layer(path: Path) -> tuple[str, dict[str, Any], dict[str, str]]:
    source = DotEnvSettingsSource(
        Settings, env_file=path, env_prefix=ENV_PREFIX, env_nested_delimiter=DELIMITER
    )
    keys = [key for key in dotenv_values(path) if key.upper().startswith(ENV_PREFIX)]
    values = source()
    sections = {_env_section(key) for key in keys}
    # A .env file may hold variables for other programs: keep only ours.
    values = {section: fields for section, fields in values.items() if section in sections}
    return ("dotenv", values, _env_names(values, keys, f"{path} "))


def _env_layer(environ: Mapping[str, str]) -> tuple[str, dict[str, Any], dict[str, str]]:
    ours = {key: value for key, value in environ.items() if key.upper().startswith(ENV_PREFIX)}
    source = EnvSettingsSource(Settings, env_prefix=ENV_PREFIX, env_nested_delimiter=DELIMITER)
    # EnvSettingsSource reads os.environ; hand it only the variables we were given.
    source.env_vars = {key.lower(): value for key, value in ours.items()}
    values = source()
    return ("env", values, _env_names(values, list(ours), "env "))


def _env_section(key: str) -> str:
    return key[len(ENV_PREFIX) :].split(DELIMITER, 1)[0].lower()


def _env_names(values: dict[str, Any], keys: list[str], label: str) -> dict[str, str]:
    by_lower = {key.lower(): key for key in keys}
    names: dict[str, str] = {}
    for section, fields in values.items():
        plain = (ENV_PREFIX + section).lower()
        names[section] = label + by_lower.get(plain, plain.upper())
        if isinstance(fields, dict):
            for field in fields:
                var = f"{ENV_PREFIX}{section}{DELIMITER}{field}".lower()
                names[f"{section}.{field}"] = label + by_lower.get(var, var.upper())
    return names


def _describe(exc: ValidationError, origins: Mapping[str, str]) -> str:
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    path = ".".join(loc[:2])
    origin = origins.get(path) or origins.get(loc[0]) or "default"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown setting"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    value = error.get("input")
    shown = "" if isinstance(value, dict) or error["type"] == "extra_forbidden" else f" = {value!r}"
    if "key" in path or "token" in path or "password" in path:
        shown = ""
    return f"invalid setting {'.'.join(loc)}{shown} from {origin}: {message}{more}"


def _leaf_paths(settings: Settings) -> list[str]:
    return [
        f"{section}.{field}"
        for section, model in settings
        if isinstance(model, BaseModel)
        for field in type(model).model_fields
    ]


def effective_values(loaded: LoadedSettings) -> list[tuple[str, str, str]]:
    """(path, printable value with secrets redacted, origin) for every setting."""
    rows = []
    for path in loaded.origins:
        section, field = path.split(".", 1)
        value = getattr(getattr(loaded.settings, section), field)
        if isinstance(value, SecretStr):
            shown = "********" if value.get_secret_value() else ""
        elif value is None:
            shown = ""
        else:
            shown = str(value)
        rows.append((path, shown, loaded.origins[path]))
    return rows


def settings_document(settings: Settings) -> dict[str, Any]:
    """Every value of `settings` as plain JSON-able data, secrets included (for a worker process
    that must run on exactly the settings its node loaded; never print or log this)."""

    def plain(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [plain(item) for item in value]
        return value

    return {name: plain(value) for name, value in settings.model_dump().items()}


def settings_from_document(document: Mapping[str, Any]) -> Settings:
    """The `Settings` a `settings_document` describes (validated again).

    Raises:
        SettingsError: the document does not describe valid settings.
    """
    try:
        return Settings.model_validate(document)
    except ValidationError as exc:
        raise SettingsError(f"invalid settings document: {exc.errors()[0]['msg']}") from None
