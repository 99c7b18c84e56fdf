"""The real `mediaserver` command in a subprocess: admin commands with `--json`, and error paths."""

import json
import os
import subprocess
import sys

import pytest

from tests.timing import MS


def run(tmp_path, *args, env=None, check=True):
    environ = {
        key: value for key, value in os.environ.items() if not key.startswith("MEDIASERVER_")
    }
    environ["MEDIASERVER_STORE__PATH"] = str(tmp_path / "store.db")
    environ.update(env or {})
    result = subprocess.run(
        [sys.executable, "-m", "mediaserver", *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=tmp_path,
        timeout=60_000 * MS,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}: {result.stderr}")
    return result


def run_json(tmp_path, *args, **kwargs):
    result = run(tmp_path, *args, "--json", **kwargs)
    return json.loads(result.stdout)  # exactly one document: json.loads rejects anything more


def test_help_lists_every_command(tmp_path):
    out = run(tmp_path, "--help").stdout
    for command in ("serve", "company", "key", "agent", "number", "calls", "config", "doctor"):
        assert command in out


def test_tenant_admin_round_trip_with_json(tmp_path):
    created = run_json(tmp_path, "company", "create", "Acme")
    assert set(created) >= {"id", "api_key"}
    assert created["api_key"].startswith("msk_")

    keys = run_json(tmp_path, "key", "list")
    assert [key["id"] for key in keys] == [created["key_id"]]
    assert created["api_key"] not in json.dumps(keys)  # the secret is shown once only

    second = run_json(tmp_path, "key", "create", "--label", "ci")
    assert second["api_key"] != created["api_key"]
    revoked = run_json(tmp_path, "key", "revoke", second["id"])
    assert revoked["id"] == second["id"]
    assert revoked["revoked_at"] is not None

    agent = run_json(
        tmp_path, "agent", "create", "--name", "Support", "--greeting", "Hi there", "--llm", "echo"
    )
    assert agent["is_default"] is True  # the first agent of a company is its default
    assert agent["llm_engine"] == "echo"
    (tmp_path / "sales.toml").write_text('name = "Sales"\ngreeting = "Hello"\nrecording = true\n')
    sales = run_json(tmp_path, "agent", "create", "--file", "sales.toml")
    assert sales["recording"] is True
    assert sales["is_default"] is False
    updated = run_json(tmp_path, "agent", "update", sales["id"], "--greeting", "Welcome")
    assert updated["greeting"] == "Welcome"
    assert run_json(tmp_path, "agent", "show", sales["id"])["greeting"] == "Welcome"
    assert {a["id"] for a in run_json(tmp_path, "agent", "list")} == {agent["id"], sales["id"]}

    number = run_json(tmp_path, "number", "add", "+14155550100", "--agent", sales["id"])
    assert number["id"] == "+14155550100"
    assert [n["id"] for n in run_json(tmp_path, "number", "list")] == ["+14155550100"]
    run_json(tmp_path, "number", "remove", "+14155550100")
    assert run_json(tmp_path, "number", "list") == []

    assert run_json(tmp_path, "calls", "list") == []
    assert [c["id"] for c in run_json(tmp_path, "company", "list")] == [created["id"]]


def test_human_output_is_a_table(tmp_path):
    run(tmp_path, "company", "create", "Acme")
    run(tmp_path, "agent", "create", "--name", "Support")
    out = run(tmp_path, "agent", "list").stdout
    assert out.splitlines()[0].split()[:2] == ["ID", "NAME"]
    assert "Support" in out


def test_company_must_be_named_when_there_are_several(tmp_path):
    first = run_json(tmp_path, "company", "create", "A")
    run_json(tmp_path, "company", "create", "B")
    result = run(tmp_path, "agent", "list", check=False)
    assert result.returncode == 1
    assert "--company" in result.stderr
    assert run_json(tmp_path, "agent", "list", "--company", first["id"]) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["agent", "show", "ag_missing"], "no agent ag_missing"),
        (["calls", "show", "call_missing"], "no call call_missing"),
        (["number", "add", "12345"], "number"),
        (["agent", "create"], "needs a name"),
        (["agent", "create", "--name", "X", "--stt", "telepathy"], "stt"),
    ],
)
def test_bad_requests_fail_with_one_line_and_no_traceback(tmp_path, args, message):
    run(tmp_path, "company", "create", "Acme")
    run(tmp_path, "agent", "create", "--name", "Support")
    result = run(tmp_path, *args, check=False)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_a_bad_setting_exits_2_naming_field_and_source(tmp_path):
    result = run(
        tmp_path, "config", "show", env={"MEDIASERVER_SERVER__PORT": "eighty"}, check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "mediaserver: invalid setting server.port = 'eighty' from env MEDIASERVER_SERVER__PORT: "
        "Input should be a valid integer, unable to parse string as an integer"
    ]


def test_a_bad_flag_value_names_the_flag(tmp_path):
    result = run(tmp_path, "serve", "--port", "70000", check=False)
    assert result.returncode == 2
    assert "from flag --port" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_show_gives_every_value_with_its_source_and_hides_secrets(tmp_path):
    (tmp_path / "s.toml").write_text("[limits]\nmax_calls = 12\n")
    rows = run_json(
        tmp_path,
        "config",
        "show",
        "--config",
        "s.toml",
        env={"MEDIASERVER_OPENAI__API_KEY": "sk-very-secret"},
    )
    by_id = {row["id"]: row for row in rows}
    assert by_id["limits.max_calls"]["value"] == "12"
    assert by_id["limits.max_calls"]["source"] == "config file s.toml [limits] max_calls"
    assert by_id["openai.api_key"]["value"] == "********"
    assert by_id["store.path"]["source"] == "env MEDIASERVER_STORE__PATH"
    assert by_id["server.host"]["source"] == "default"
    assert "sk-very-secret" not in json.dumps(rows)


def test_doctor_reports_each_check(tmp_path):
    result = run(tmp_path, "doctor", "--json", env={"MEDIASERVER_SERVER__PORT": "0"}, check=False)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    checks = {check["id"]: check for check in document["checks"]}
    assert checks["store"]["ok"] is True
    assert checks["offline_engines"]["ok"] is True
    assert checks["whisper_model"]["ok"] is True
    assert checks["deepgram_key"]["detail"].startswith("not set")
    assert "chromium" in checks
