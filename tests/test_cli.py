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
    write_clips(inbox, 4, recorded_in="US")
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
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "onshore",
            "inventory",
            "--project",
            str(root),
            "--site",
            "jp-tokyo",
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert json.loads(done.stdout)["error"] == "config.site_not_found"


def test_usage_and_file_system_errors_are_json_too(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "onshore"]
    usage = subprocess.run([*run, "ingest", "--bogus", "--json"], capture_output=True, text=True)
    assert usage.returncode == 2 and json.loads(usage.stdout)["error"] == "usage"
    (tmp_path / "afile").write_text("")
    fs = subprocess.run(
        [*run, "init", str(tmp_path / "afile"), "--json"], capture_output=True, text=True
    )
    assert fs.returncode == 8 and json.loads(fs.stdout)["error"] == "filesystem"


def test_sites_reports_an_exposed_keystore(tmp_path: Path) -> None:
    root = tmp_path / "p"
    _json(["init", str(root)])
    (root / "keys" / "eu-frankfurt" / "hmac.secret").chmod(0o644)
    sites = {s["id"]: s for s in _json(["sites", "--project", str(root)])}  # type: ignore[union-attr]
    assert sites["cn-shanghai"]["keystore_status"] == "ok"
    assert "can be read by others" in sites["eu-frankfurt"]["keystore_status"]


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
        "--trip-km",
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
    (tmp_path / "up" / "mine.mcap").write_bytes(b"a file the simulator did not write")
    other = _json([*args[:-4], "--seed", "6", "--out", str(tmp_path / "up")])
    left = {p.name for p in (tmp_path / "up").glob("*.mcap")}
    assert len(left) == other["clips"] + 1 and "mine.mcap" in left, "earlier clips are gone"


def test_lab_holds_every_site_and_sends_nothing_across_a_border(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    made = _json(["lab", str(lab), "--vehicles", "15", "--minutes", "1", "--trip-km", "1"])
    assert isinstance(made, dict)
    sites = {s["site"]: s for s in made["sites"]}
    assert set(sites) == {"cn-shanghai", "eu-frankfurt", "us-oregon"}
    for site, done in sites.items():
        assert done["clips"] > 0 and "trajectory" in done["categories"], site
        # Every clip went through both profiles (short trips may be trimmed away whole).
        assert set(done["deidentified"]) == {"training", "export"}, site
        assert {p["clips_in"] for p in done["deidentified"].values()} == {done["clips"]}, site
    denied = runner.invoke(
        app,
        [
            *("transfer", "-p", str(lab), "--from", "eu-frankfurt", "--to", "us-oregon"),
            *("--dataset", "raw", "--purpose", "adas_training", "--json"),
        ],
    )
    assert denied.exit_code != 0
    assert getattr(denied.exception, "code", None) == "party.not_a_party"
    assert getattr(denied.exception, "exit_code", None) == 18


def test_fleet_simulate_needs_a_site_or_a_region(tmp_path: Path) -> None:
    result = runner.invoke(app, ["fleet", "simulate", "--out", str(tmp_path), "--json"])
    assert result.exit_code != 0
    assert getattr(result.exception, "code", None) == "config"


def test_every_command_takes_json() -> None:
    import typer.main

    def walk(group: object, prefix: str) -> list[tuple[str, object]]:
        found = []
        for name, cmd in getattr(group, "commands", {}).items():
            if hasattr(cmd, "commands"):
                found += walk(cmd, f"{prefix}{name} ")
            else:
                found.append((prefix + name, cmd))
        return found

    commands = walk(typer.main.get_command(app), "")
    assert {name for name, _ in commands} >= {
        "init",
        "sites",
        "ingest",
        "inventory",
        "demo",
        "fleet simulate",
        "store verify",
    }
    for name, cmd in commands:
        options = {opt for param in cmd.params for opt in getattr(param, "opts", [])}  # type: ignore[attr-defined]
        assert "--json" in options, f"onshore {name} has no --json"
