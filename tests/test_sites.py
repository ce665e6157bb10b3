"""Projects and sites: init, settings that name the bad field, keystores kept private."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from onshore.errors import ConfigError, KeystoreError, ProjectExists, ProjectNotFound, SiteNotFound
from onshore.settings import Project, load_project
from onshore.sites import describe_sites, init_project
from onshore.sites.keystore import HMAC_FILE, SIGNING_FILE, load_keystore


def test_init_writes_three_sites_with_private_keystores(project: Project) -> None:
    sites = {s["id"]: s for s in describe_sites(project)}
    assert {k: v["jurisdiction"] for k, v in sites.items()} == {
        "cn-shanghai": "CN",
        "eu-frankfurt": "EU",
        "us-oregon": "US",
    }
    for site in project.settings.sites.values():
        folder = project.keystore_path(site)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        for name in (SIGNING_FILE, HMAC_FILE):
            assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
        keys = load_keystore(folder)
        assert keys.public_key.verify(keys.sign(b"x"), b"x") is None
        assert (
            "Secret(**********)" in repr(keys)
            and keys.hmac_secret.reveal() not in repr(keys).encode()
        )
        assert project.catalogue_url(site).startswith(f"sqlite:///{project.root}/sites/{site.id}/")
        assert Path(project.store_url(site)).is_dir()
    secrets = [
        load_keystore(project.keystore_path(s)).hmac_secret.reveal()
        for s in project.settings.sites.values()
    ]
    assert len(set(secrets)) == 3


def test_init_never_overwrites(project: Project) -> None:
    with pytest.raises(ProjectExists):
        init_project(project.root)


def test_a_keystore_readable_by_others_is_refused(project: Project) -> None:
    folder = project.keystore_path(project.site("us-oregon"))
    (folder / HMAC_FILE).chmod(0o644)
    with pytest.raises(KeystoreError, match="can be read by others"):
        load_keystore(folder)


def test_unknown_site_lists_the_declared_ones(project: Project) -> None:
    with pytest.raises(SiteNotFound) as info:
        project.site("jp-tokyo")
    assert info.value.hint == "declared sites: cn-shanghai, eu-frankfurt, us-oregon"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        # A code no rulebook governs ("JP") is refused when the rulebooks load (see
        # test_rulebook_files); one that is no code at all, here.
        ('[sites.a1]\njurisdiction = "Japan"\nentity = "x"\n', "[sites.a1] jurisdiction"),
        ('[sites.a1]\njurisdiction = "CN"\n', "[sites.a1] entity: Field required"),
        ('[sites.a1]\njurisdiction = "CN"\nentity = "x"\ncolour = 1\n', "[sites.a1] colour"),
        ('[sites.a1]\njurisdiction = "CN"\nentity = "x"\nstore = "s3://b/x"\n', "no default"),
        ("[sites\n", "not valid TOML"),
        ("[wrong]\n", "unknown section(s) wrong"),
        (
            '[sites.a1]\njurisdiction = "CN"\nentity = "x"\nretention = { raw_days = 0 }\n',
            "[sites.a1] retention.raw_days: Input should be greater than 0",
        ),
        (
            '[sites.a1]\njurisdiction = "CN"\nentity = "x"\nretention = { raw_days = "1y" }\n',
            "[sites.a1] retention.raw_days: Input should be a valid integer",
        ),
        (
            '[sites.a1]\njurisdiction = "CN"\nentity = "x"\n'
            'responsible_person = { name = "Li Wei", email = "li.wei" }\n',
            "[sites.a1] responsible_person.email: Value error, not an email address: 'li.wei'",
        ),
    ],
)
def test_bad_settings_name_the_field(tmp_path: Path, text: str, fragment: str) -> None:
    (tmp_path / "onshore.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_project(tmp_path)
    assert fragment in str(info.value)
    assert str(tmp_path / "onshore.toml") in str(info.value)


def test_any_fsspec_store_and_sqlalchemy_catalogue(tmp_path: Path) -> None:
    (tmp_path / "onshore.toml").write_text(
        '[sites.cn-test]\njurisdiction = "CN"\nentity = "x"\nstore = "memory://cn-test"\n'
        'catalogue = "postgresql+psycopg://u:secret@db/onshore"\n'
    )
    project = load_project(tmp_path / "onshore.toml")
    (row,) = describe_sites(project)
    assert row["store"] == "memory://cn-test"
    assert "secret" not in row["catalogue"] and row["catalogue"].startswith(
        "postgresql+psycopg://u:"
    )


def test_project_discovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = init_project(tmp_path / "p")
    nested = project.root / "sites" / "cn-shanghai"
    monkeypatch.chdir(nested)
    monkeypatch.delenv("ONSHORE_PROJECT", raising=False)
    assert load_project().root == project.root
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProjectNotFound, match="onshore init"):
        load_project()
