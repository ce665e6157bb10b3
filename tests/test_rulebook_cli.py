"""``onshore rulebook show|lint|diff``, driven in process with their ``--json`` output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from onshore.cli.rulebook import app
from onshore.rulebook.loader import _builtin_text

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONSHORE_PROJECT", raising=False)
    monkeypatch.chdir(tmp_path)


def _json(args: list[str], exit_code: int = 0) -> Any:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == exit_code, result.output
    return json.loads(result.stdout)


def test_show_lists_the_rulebooks() -> None:
    rows = _json(["show"])
    assert [r["key"] for r in rows] == ["cn", "eu", "us"]
    assert all(r["version"] == "2026.1" and r["unchecked"] > 0 for r in rows)
    plain = runner.invoke(app, ["show"])
    assert plain.exit_code == 0 and "builtin:cn" in plain.stdout


def test_show_one_rulebook() -> None:
    cn = _json(["show", "cn"])
    assert cn["jurisdiction"] == "CN" and cn["file"] == "builtin:cn"
    rule = cn["rules"]["cn.cbdf.pi_100k_to_1m"]
    assert rule["count"]["when"] == [">= 100000", "< 1000000"]
    assert rule["mechanisms"] == ["cn_standard_contract", "cn_certification"]
    assert cn["mechanisms"]["cn_security_assessment"]["valid_for"] == {"years": 3}
    assert cn["mechanisms"]["cn_security_assessment"]["renew_before"] == {"working_days": 60}
    plain = runner.invoke(app, ["show", "us"])
    assert plain.exit_code == 0 and "us.doj.geolocation_bulk" in plain.stdout


def test_show_a_file_and_an_unknown_name(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(_builtin_text("eu").replace('version: "2026.1"', 'version: "9"'))
    assert _json(["show", str(path)])["version"] == "9"
    error = runner.invoke(app, ["show", "jp"])
    assert error.exit_code != 0 and "no rulebook 'jp'" in str(error.exception)


def test_lint_builtins_and_a_bad_file(tmp_path: Path) -> None:
    reports = _json(["lint"])
    assert [r["file"] for r in reports] == ["builtin:cn", "builtin:eu", "builtin:us"]
    assert all(r["ok"] and not r["errors"] and r["warnings"] for r in reports)

    bad = tmp_path / "bad.yaml"
    bad.write_text(_builtin_text("us").replace("window: trailing_12_months", "window: rolling", 1))
    line = next(
        n
        for n, text in enumerate(bad.read_text().splitlines(), start=1)
        if "window: rolling" in text
    )
    [report] = _json(["lint", str(bad)], exit_code=2)
    assert report["ok"] is False
    assert report["errors"][0]["line"] == line and "rolling" in report["errors"][0]["message"]
    plain = runner.invoke(app, ["lint", str(bad)])
    assert plain.exit_code == 2 and f"line {line}" in plain.stdout


def test_diff_two_versions(tmp_path: Path) -> None:
    new = tmp_path / "cn-next.yaml"
    new.write_text(
        _builtin_text("cn")
        .replace('version: "2026.1"', 'version: "2026.2"')
        .replace('when: ["< 10000"]', 'when: ["< 5000"]')
    )
    result = _json(["diff", "cn", str(new)])
    assert result["same"] is False
    assert result["summary"] == {"added": 0, "removed": 0, "changed": 2}
    changed = {c["id"]: c["fields"] for c in result["changes"]}
    assert changed["cn.cbdf.sensitive_under_10k"] == [
        {"field": "count.when", "before": ["< 10000"], "after": ["< 5000"]}
    ]
    assert changed["header"] == [{"field": "version", "before": "2026.1", "after": "2026.2"}]
    assert _json(["diff", "builtin:cn", "cn"])["same"] is True
    plain = runner.invoke(app, ["diff", "cn", str(new)])
    assert plain.exit_code == 0 and "~ rules cn.cbdf.sensitive_under_10k" in plain.stdout


def test_show_in_a_project(tmp_path: Path) -> None:
    from onshore.sites import init_project

    project = init_project(tmp_path / "proj", "three-regions")
    rows = _json(["show", "--project", str(project.root)])
    assert [r["key"] for r in rows] == ["cn", "eu", "us"]
    missing = runner.invoke(app, ["show", "--project", str(tmp_path / "nowhere")])
    assert missing.exit_code != 0
