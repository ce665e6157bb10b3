"""``onshore gate check`` and ``onshore approvals add|list|revoke``, driven in process with their
``--json`` output, and through ``python -m onshore`` for the exit codes scripts branch on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from onshore.cli.app import app
from onshore.errors import ConfigError, InvalidApproval, InvalidRequest, TransferDenied
from onshore.settings import Project

runner = CliRunner()

REQUEST: dict[str, Any] = {
    "origin": "CN",
    "destination": "US",
    "recipient": {"name": "Example Motors Inc.", "country": "US", "linked_to": []},
    "purpose": "adas_training",
    "date": "2026-11-29",
    "data": [{"category": "trajectory", "subjects": 20000, "deid_state": "pseudonymized"}],
    "history": [
        {"date": "2026-03-01", "destination": "US", "category": "vehicle_id", "subjects": 95000}
    ],
    "approvals": [
        {
            "id": "A1",
            "type": "cn_security_assessment",
            "origin": "CN",
            "recipient": "Example Motors Inc.",
            "categories": ["trajectory"],
            "purposes": ["adas_training"],
            "max_subjects": 100000,
            "valid_from": "2026-01-01",
            "valid_to": "2028-12-31",
            "reference": "CAC-2026-001",
        }
    ],
}


@pytest.fixture(autouse=True)
def _no_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONSHORE_PROJECT", raising=False)
    monkeypatch.chdir(tmp_path)


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data))
    return path


def _run(args: list[str], exit_code: int = 0, stdin: str | None = None) -> Any:
    result = runner.invoke(app, [*args, "--json"], input=stdin)
    assert result.exit_code == exit_code, (result.output, result.exception)
    return json.loads(result.stdout)


def test_check_outside_a_project_uses_the_file(tmp_path: Path) -> None:
    denied = _run(["gate", "check", str(_write(tmp_path / "r.json", REQUEST))], exit_code=10)
    assert denied["allowed"] is False and denied["mechanisms"] == ["cn_security_assessment"]
    assert denied["approval"] is None and denied["rulebook_versions"] == {"cn": "2026.1"}
    assert denied["subjects_in_window"]["cn.order7.pi_over_100k_persons"] == 115_000
    larger = json.loads(json.dumps(REQUEST))
    larger["approvals"][0]["max_subjects"] = 200_000
    allowed = _run(["gate", "check", "-"], stdin=json.dumps(larger))
    assert allowed["allowed"] is True and allowed["approval"]["id"] == "A1"
    text = runner.invoke(app, ["gate", "check", str(_write(tmp_path / "l.json", larger))])
    assert text.exit_code == 0 and text.stdout.startswith("ALLOWED")
    assert "approval: A1 (cn_security_assessment) CAC-2026-001" in text.stdout
    text = runner.invoke(app, ["gate", "check", str(tmp_path / "r.json")])
    assert text.exit_code == 10 and text.stdout.startswith("DENIED")


def test_exit_codes_through_the_entry_point(tmp_path: Path) -> None:
    """What scripts see: 10 and the decision when denied, 12 and an error naming the field
    when the request is wrong."""
    denied = subprocess.run(
        [sys.executable, "-m", "onshore", "gate", "check", "-", "--json"],
        input=json.dumps(REQUEST),
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert denied.returncode == TransferDenied.exit_code == 10, denied.stderr
    assert json.loads(denied.stdout)["allowed"] is False
    bad = json.loads(json.dumps(REQUEST))
    bad["data"][0]["subjects"] = -5
    invalid = subprocess.run(
        [sys.executable, "-m", "onshore", "gate", "check", "-", "--json"],
        input=json.dumps(bad),
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert invalid.returncode == 12, invalid.stderr
    error = json.loads(invalid.stdout)
    assert error["error"] == "gate.invalid_request"
    assert error["message"].startswith("request field data[0].subjects:")


def test_approvals_on_file_decide_a_sites_checks(project: Project, tmp_path: Path) -> None:
    root = ["--project", str(project.root)]
    at = [*root, "--site", "cn-shanghai"]
    added = _run(
        [
            "approvals", "add", *at, "--id", "CAC-2026-017", "--type", "cn_security_assessment",
            "--recipient", "Example Motors Inc.", "-c", "trajectory", "-c", "vehicle_id",
            "--purpose", "adas_training", "--max-subjects", "200000",
            "--valid-from", "2026-01-01", "--reference", "CAC outbound 2026-017",
            "--as-of", "2026-06-01",
        ]
    )  # fmt: skip
    assert added["approval"]["valid_until"] == "2028-12-31"
    assert added["approval"]["renew_by"] == "2028-10-09"
    assert added["approval"]["status"] == "valid" and added["approval"]["origin"] == "CN"

    listed = _run(["approvals", "list", *at, "--as-of", "2028-09-20"])
    [entry] = listed["approvals"]
    assert entry["status"] == "renewal_due" and entry["id"] == "CAC-2026-017"
    assert len(listed["warnings"]) == 1 and "by 2028-10-09, in 19 day(s)" in listed["warnings"][0]
    plain = runner.invoke(app, ["approvals", "list", *at, "--as-of", "2028-09-20"])
    assert plain.exit_code == 0 and "renewal_due" in plain.stdout
    assert "warning:" in plain.stderr
    assert _run(["approvals", "list", *root, "--site", "us-oregon"])["approvals"] == []

    # without approvals in the request, the site's registry decides
    from_registry = {k: v for k, v in REQUEST.items() if k != "approvals"}
    path = _write(tmp_path / "site.json", from_registry)
    allowed = _run(["gate", "check", str(path), *at])
    assert allowed["allowed"] is True and allowed["approval"]["id"] == "CAC-2026-017"
    # approvals listed in the request are a what-if and replace the registry's
    listed_in_file = _write(tmp_path / "file.json", REQUEST)
    assert _run(["gate", "check", str(listed_in_file), *at], exit_code=10)["approval"] is None

    revoked = _run(["approvals", "revoke", "CAC-2026-017", *at, "--reason", "superseded"])
    assert revoked["approval"]["revoke_reason"] == "superseded"
    assert revoked["approval"]["revoked_at"] is not None
    denied = _run(["gate", "check", str(path), *at], exit_code=10)
    assert any("was revoked on" in r and "superseded" in r for r in denied["reasons"])
    assert _run(["approvals", "list", *at])["approvals"][0]["status"] == "revoked"


def test_approvals_are_refused_with_the_option_named(project: Project) -> None:
    at = ["--project", str(project.root), "--site", "cn-shanghai"]
    base = [
        "approvals", "add", *at, "--id", "X", "--recipient", "R", "--purpose", "fleet_analytics",
        "--valid-from", "2026-01-01",
    ]  # fmt: skip
    cases: list[tuple[list[str], type[Exception], str]] = [
        (["--type", "eu_scc", "-c", "trajectory"], InvalidApproval, "not a mechanism of the cn"),
        (
            ["--type", "eu_scc", "-c", "trajectory", "--origin", "EU"],
            InvalidApproval,
            "holds CN data",
        ),
        (["--type", "cn_standard_contract", "-c", "trajectroy"], InvalidApproval, "--category:"),
        (
            ["--type", "cn_standard_contract", "-c", "trajectory", "--valid-to", "2025-01-01"],
            InvalidApproval,
            "before valid_from",
        ),
        (
            ["--type", "cn_standard_contract", "-c", "trajectory", "--as-of", "soon"],
            ConfigError,
            "--as-of 'soon' is not a date",
        ),
    ]
    for extra, error, message in cases:
        result = runner.invoke(app, [*base, *extra, "--json"])
        assert isinstance(result.exception, error), (extra, result.output, result.exception)
        assert message in str(result.exception), (extra, str(result.exception))
    result = runner.invoke(app, ["approvals", "revoke", "nope", *at, "--reason", "x"])
    assert result.exception is not None and "no approval 'nope'" in str(result.exception)


def test_a_check_belongs_at_the_site_of_the_data(project: Project, tmp_path: Path) -> None:
    path = _write(tmp_path / "r.json", REQUEST)
    result = runner.invoke(
        app, ["gate", "check", str(path), "--project", str(project.root), "--site", "eu-frankfurt"]
    )
    assert isinstance(result.exception, ConfigError)
    assert "not governed by the rulebook of site eu-frankfurt" in str(result.exception)
    japan = _write(tmp_path / "jp.json", {**REQUEST, "origin": "JP"})
    result = runner.invoke(
        app, ["gate", "check", str(japan), "--project", str(project.root), "--site", "cn-shanghai"]
    )
    assert isinstance(result.exception, InvalidRequest)
    assert str(result.exception).startswith("request field origin: no rulebook governs data")
