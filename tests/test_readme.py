"""The README's two set-up lines are the contract CI runs; they must stay in step."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_lines():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "```sh", "the README must start with the set-up commands"
    end = lines.index("```", 1)
    return lines[1:end]


def test_readme_starts_with_exactly_two_setup_lines():
    run_line, test_line = setup_lines()
    assert "mediaserver serve" in run_line
    assert "pytest" in test_line
    for line in (run_line, test_line):
        assert line.startswith("python3 -m venv .venv && "), "each line makes its own venv"


def test_ci_runs_the_readme_test_line_exactly():
    _, test_line = setup_lines()
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_line in ci_lines


def test_ci_runs_the_extra_steps_the_readme_names():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for step in ("pytest -m e2e", "tox -e lint,type", "apt-get install"):
        assert step in ci
        assert step in readme
