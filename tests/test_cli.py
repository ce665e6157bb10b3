"""The command line: every command answers --json, errors become codes and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from conftest import write_clips
from onshore.cli.app import app

runner = CliRunner()


def _json(args: list[str]) -> object:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_init_sites_ingest_inventory_verify(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    made = _json(["init", str(root), "--example", "three-regions"])
    assert isinstance(made, dict) and len(made["sites"]) == 3
    sites = _json(["sites", "--project", str(root)])
    assert [s["id"] for s in sites] == ["cn-shanghai", "eu-frankfurt", "us-oregon"]  # type: ignore[union-attr]

    inbox = tmp_path / "in"
    write_clips(inbox, 4)
    (inbox / "empty.mcap").write_bytes(b"")
    summary = _json(["ingest", "--project", str(root), "--site", "us-oregon", str(inbox)])
    assert isinstance(summary, dict)
    for key in ("files", "clips", "rows", "bytes", "quarantined"):
        assert key in summary
    assert (summary["files"], summary["clips"], summary["rows"]) == (5, 4, 480)
    assert summary["quarantined"][0]["path"].endswith("empty.mcap")
    assert "empty" in summary["quarantined"][0]["reason"]

    inv = _json(["inventory", "--project", str(root), "--site", "us-oregon"])
    assert isinstance(inv, dict)
    for key in ("site", "clips", "vehicles", "rows", "bytes", "time_range", "consent"):
        assert key in inv
    assert (inv["clips"], inv["vehicles"], inv["rows"]) == (4, 4, 480)
    check = _json(["store", "verify", "--project", str(root), "--site", "us-oregon", "--deep"])
    assert isinstance(check, dict) and check["ok"] is True


def test_errors_are_json_with_code_and_exit_code(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "onshore", "inventory", "--project", str(tmp_path), "--site", "x"]
    done = subprocess.run([*cmd, "--json"], capture_output=True, text=True)
    assert done.returncode == 2
    error = json.loads(done.stdout)
    assert error["error"] == "config.project_not_found" and "onshore init" in error["hint"]
    plain = subprocess.run(cmd, capture_output=True, text=True)
    assert plain.returncode == 2 and plain.stderr.startswith("error [config.project_not_found]")


def test_unknown_site_exit_code(tmp_path: Path) -> None:
    root = tmp_path / "p"
    _json(["init", str(root)])
    result = runner.invoke(
        app, ["inventory", "--project", str(root), "--site", "jp-tokyo", "--json"]
    )
    assert result.exit_code != 0
    assert isinstance(result.exception, Exception)
    assert getattr(result.exception, "code", None) == "config.site_not_found"


def test_fleet_simulate_in_a_project_stores_the_site_zones(tmp_path: Path) -> None:
    root = tmp_path / "p"
    _json(["init", str(root)])
    args = [
        "fleet",
        "simulate",
        "--project",
        str(root),
        "--site",
        "us-oregon",
        "--vehicles",
        "40",
        "--minutes",
        "1",
        "--seed",
        "5",
        "--out",
        str(tmp_path / "up"),
    ]
    first = _json(args)
    assert isinstance(first, dict) and first["region"] == "us" and first["clips"] > 0
    assert first["site_sensitive_areas"] == {
        "path": "reference/sensitive_areas.geojson",
        "written": True,
    }
    zones = root / "sites" / "us-oregon" / "store" / "reference" / "sensitive_areas.geojson"
    assert json.loads(zones.read_text())["features"]
    again = _json(args)
    assert again["site_sensitive_areas"]["written"] is False, "the first zones stay the site's"
    assert len(list((tmp_path / "up").glob("*.mcap"))) == first["clips"]


def test_fleet_simulate_needs_a_site_or_a_region(tmp_path: Path) -> None:
    result = runner.invoke(app, ["fleet", "simulate", "--out", str(tmp_path), "--json"])
    assert result.exit_code != 0
    assert getattr(result.exception, "code", None) == "config"
