"""Every settings source, their precedence, origins, and the one-line error path."""

import pytest
from pydantic import SecretStr, ValidationError

from config import Settings, SettingsError, load_settings
from config.loading import effective_values
from config.settings import WebhookSettings


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_match_the_documented_contract():
    settings = load_settings(environ={}, env_file=None).settings
    assert settings.server.host == "127.0.0.1"
    assert settings.limits.max_calls == 1000
    assert settings.limits.requests_per_min == 60
    assert settings.limits.call_attempts_per_min == 0
    assert settings.limits.signal_messages_per_s == 50
    assert settings.limits.drain_s == 30
    assert settings.vad.min_speech_ms == 200
    assert settings.vad.end_of_turn_silence_ms == 500
    assert settings.supervision.max_restarts == 3
    assert settings.supervision.restart_window_s == 10


def test_each_source_overrides_the_one_below(tmp_path):
    toml = write(
        tmp_path / "s.toml",
        "[server]\nport = 1001\nhost = '::1'\n[limits]\nmax_calls = 7\ndrain_s = 1\n",
    )
    dotenv = write(
        tmp_path / ".env", "MEDIASERVER_SERVER__PORT=1002\nMEDIASERVER_LIMITS__MAX_CALLS=8\n"
    )
    environ = {"MEDIASERVER_SERVER__PORT": "1003"}
    loaded = load_settings(
        config_file=toml,
        env_file=dotenv,
        environ=environ,
        overrides={"server.port": 1004},
        flag_names={"server.port": "--port"},
    )
    s = loaded.settings
    assert s.server.port == 1004  # flag beats env
    assert s.limits.max_calls == 8  # .env beats TOML
    assert s.server.host == "::1"  # TOML beats default
    assert s.limits.drain_s == 1.0
    assert loaded.origins["server.port"] == "flag --port"
    assert loaded.origins["limits.max_calls"] == f"{dotenv} MEDIASERVER_LIMITS__MAX_CALLS"
    assert loaded.origins["server.host"] == f"config file {toml} [server] host"
    assert loaded.origins["vad.threshold"] == "default"

    without_flag = load_settings(config_file=toml, env_file=dotenv, environ=environ)
    assert without_flag.settings.server.port == 1003  # env beats .env
    assert without_flag.origins["server.port"] == "env MEDIASERVER_SERVER__PORT"


def test_env_names_are_case_insensitive_and_lists_parse_as_json():
    loaded = load_settings(
        environ={"mediaserver_webrtc__stun_urls": '["stun:127.0.0.1:3478"]'}, env_file=None
    )
    assert loaded.settings.webrtc.stun_urls == ["stun:127.0.0.1:3478"]


def test_dotenv_variables_of_other_programs_are_ignored(tmp_path):
    dotenv = write(tmp_path / ".env", "OPENAI_API_KEY=sk-not-ours\nMEDIASERVER_SERVER__PORT=9\n")
    loaded = load_settings(env_file=dotenv, environ={})
    assert loaded.settings.server.port == 9
    assert loaded.settings.openai.api_key is None  # never read from the SDK's own variable


def test_secrets_are_secret_and_redacted_in_show():
    loaded = load_settings(environ={"MEDIASERVER_OPENAI__API_KEY": "sk-secret"}, env_file=None)
    assert isinstance(loaded.settings.openai.api_key, SecretStr)
    assert "sk-secret" not in repr(loaded.settings)
    rows = {path: (value, origin) for path, value, origin in effective_values(loaded)}
    assert rows["openai.api_key"] == ("********", "env MEDIASERVER_OPENAI__API_KEY")
    assert "sk-secret" not in str(rows)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"environ": {"MEDIASERVER_SERVER__PORT": "eighty"}},
            "invalid setting server.port = 'eighty' from env MEDIASERVER_SERVER__PORT:",
        ),
        (
            {"environ": {"MEDIASERVER_LIMITS__MAX_CALS": "5"}},
            "invalid setting limits.max_cals from env MEDIASERVER_LIMITS__MAX_CALS: "
            "unknown setting",
        ),
        (
            {"environ": {"MEDIASERVER_LOG__FORMAT": "xml"}},
            "invalid setting log.format = 'xml' from env MEDIASERVER_LOG__FORMAT:",
        ),
        (
            {
                "environ": {},
                "overrides": {"server.port": 70000},
                "flag_names": {"server.port": "--port"},
            },
            "invalid setting server.port = 70000 from flag --port:",
        ),
        (
            {
                "environ": {
                    "MEDIASERVER_DEEPGRAM__API_KEY": "x",
                    "MEDIASERVER_DEEPGRAM__RECONNECT_ATTEMPTS": "-1",
                }
            },
            "invalid setting deepgram.reconnect_attempts = '-1' from env",
        ),
    ],
)
def test_a_bad_value_names_the_field_and_its_source(kwargs, expected):
    with pytest.raises(SettingsError) as caught:
        load_settings(env_file=None, **kwargs)
    message = str(caught.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_a_bad_value_in_the_toml_file_names_file_and_key(tmp_path):
    toml = write(tmp_path / "s.toml", "[vad]\nthreshold = 2.0\n")
    with pytest.raises(
        SettingsError, match=r"vad.threshold = 2.0 from config file .*s.toml \[vad\] threshold"
    ):
        load_settings(config_file=toml, environ={}, env_file=None)


def test_a_broken_or_missing_toml_file_is_a_settings_error(tmp_path):
    with pytest.raises(SettingsError, match="no such file"):
        load_settings(config_file=tmp_path / "missing.toml", environ={}, env_file=None)
    broken = write(tmp_path / "broken.toml", "[server\n")
    with pytest.raises(SettingsError, match=r"broken\.toml"):
        load_settings(config_file=broken, environ={}, env_file=None)


def test_a_secret_value_is_never_echoed_in_an_error(tmp_path):
    toml = write(tmp_path / "s.toml", "[openai]\napi_key = 424242\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(config_file=toml, environ={}, env_file=None)
    assert str(caught.value).startswith("invalid setting openai.api_key from config file")
    assert "424242" not in str(caught.value)


def test_settings_are_frozen():
    settings = Settings()
    with pytest.raises(Exception, match="frozen"):
        settings.server.port = 1  # type: ignore[misc]


def test_a_webhook_lease_must_outlast_an_attempt():
    settings = WebhookSettings()
    assert settings.lease_s >= 5 * settings.timeout_s
    with pytest.raises(ValidationError, match="lease_s must be longer than timeout_s"):
        WebhookSettings(timeout_s=30.0, lease_s=30.0)
