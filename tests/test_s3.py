"""A site's store on real S3 (SeaweedFS's ``weed mini``, which enforces SigV4): the object store's
operations, credentials from the site's keystore or the environment, a store that pickles into
other processes, and failures said in words that name the store and never the secret."""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import S3Server, free_port, write_clips
from onshore.cli.app import app
from onshore.errors import KeystoreError, StoreError
from onshore.ingest import ingest
from onshore.settings import Project, load_project
from onshore.sites import init_project
from onshore.sites.keystore import (
    S3_FILE,
    S3Credentials,
    Secret,
    load_s3_credentials,
    save_s3_credentials,
)
from onshore.store import SiteStore
from onshore.store.objects import ObjectStore, sha256

SITE = "cn-shanghai"


@pytest.fixture(autouse=True)
def no_aws_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each test starts with no AWS settings but those it sets (not the developer's ~/.aws)."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _credentials(server: S3Server, secret: str | None = None) -> S3Credentials:
    return S3Credentials(
        server.key,
        Secret((secret or server.secret).encode()),
        endpoint_url=server.endpoint,
        region="us-east-1",
    )


@pytest.fixture
def store(s3_server: S3Server) -> ObjectStore:
    """A fresh prefix of the server's bucket, with the server's keys given."""
    return ObjectStore(
        s3_server.url(f"t-{uuid.uuid4().hex[:12]}"), credentials=_credentials(s3_server)
    )


def test_the_server_refuses_a_wrong_secret(s3_server: S3Server) -> None:
    """What the error tests below rely on: the server checks signatures."""
    import s3fs

    good = s3fs.S3FileSystem(
        key=s3_server.key, secret=s3_server.secret, endpoint_url=s3_server.endpoint
    )
    assert good.exists(s3_server.bucket)
    bad = s3fs.S3FileSystem(
        key=s3_server.key,
        secret="not-" + s3_server.secret,
        endpoint_url=s3_server.endpoint,
        skip_instance_cache=True,
    )
    with pytest.raises(PermissionError, match="signature"):
        bad.ls(s3_server.bucket)


def test_object_store_operations_on_s3(store: ObjectStore, tmp_path: Path) -> None:
    data = b"clip bytes"
    path = ObjectStore.clip_path(sha256(data))
    first, second = store.put(path, data), store.put(path, data)
    assert first.written and not second.written
    assert store.exists(path) and store.read(path) == data and store.size(path) == len(data)
    assert list(store.clip_digests()) == [(sha256(data), path)]

    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(3 << 20))
    many = store.put_many([("clips/x/b.parquet", b"b"), ("clips/x/a.parquet", local)])
    assert [s.written for s in many] == [True, True]
    assert store.read("clips/x/a.parquet") == local.read_bytes()
    assert list(store.find("clips/x")) == ["clips/x/a.parquet", "clips/x/b.parquet"]
    assert store.sizes("clips/x") == {"clips/x/a.parquet": 3 << 20, "clips/x/b.parquet": 1}
    assert list(store.find("nothing")) == [] and store.sizes("nothing") == {}

    with pytest.raises(StoreError, match="clips/none is not in store s3://"):
        store.read("clips/none")
    store.delete("clips/x/b.parquet")
    store.delete("clips/x/b.parquet")  # deleting what is not there is not an error
    assert not store.exists("clips/x/b.parquet")
    assert list(store.find("clips/x")) == ["clips/x/a.parquet"]

    bad = tmp_path / "bad file.mcap"
    bad.write_bytes(b"\0\1")
    where = store.quarantine_file(bad, sha256(b"\0\1"), {"reason": "truncated"})
    assert store.read(where) == b"\0\1" and b"truncated" in store.read(where + ".reason.json")
    assert store.staging_leftovers() == [] and store.credentials_source == "keystore"


def test_credentials_from_the_environment(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    store = ObjectStore(s3_server.url(f"env-{uuid.uuid4().hex[:8]}"))
    assert store.credentials_source == "environment" and store.endpoint == s3_server.endpoint
    store.put("a/b", b"from the environment")
    assert store.read("a/b") == b"from the environment"
    # The environment is read as each store opens, not once per process.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-" + s3_server.secret)
    with pytest.raises(StoreError, match="refused the credentials") as caught:
        ObjectStore(store.url).read("a/b")
    assert "AWS_SECRET_ACCESS_KEY" in (caught.value.hint or "")


@pytest.mark.slow
def test_a_pickled_store_works_in_another_process(store: ObjectStore) -> None:
    store.put("here", b"written before pickling")
    copy = pickle.loads(pickle.dumps(store))
    assert copy.url == store.url and copy.read("here") == b"written before pickling"
    child = (
        "import pickle, sys\n"
        "store = pickle.loads(sys.stdin.buffer.read())\n"
        "store.put('there', b'written by another process')\n"
        "sys.stdout.write(store.read('here').decode())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", child],
        input=pickle.dumps(store),
        capture_output=True,
        timeout=120,
        # The child has no AWS settings: it signs with the pickled store's own credentials.
        env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"written before pickling"
    assert store.read("there") == b"written by another process"


def _s3_project(root: Path, server: S3Server) -> Project:
    """The three-regions example, its Shanghai site's store in the server's bucket."""
    project = init_project(root, "three-regions")
    toml = root / "onshore.toml"
    text = toml.read_text()
    prefix = f"proj-{uuid.uuid4().hex[:8]}"
    text = text.replace('store = "sites/cn-shanghai/store"', f'store = "{server.url(prefix)}"')
    text = text.replace(
        'catalogue = "sqlite:///sites/cn-shanghai/store/catalogue.sqlite"',
        'catalogue = "sqlite:///sites/cn-shanghai/catalogue.sqlite"',
    )
    toml.write_text(text)
    (root / "sites" / SITE).mkdir(parents=True, exist_ok=True)
    project = load_project(root)
    assert project.store_url(project.site(SITE)).startswith("s3://")
    return project


def _ingest_some(project: Project, tmp_path: Path) -> None:
    with SiteStore.open(project, SITE) as site:
        report = ingest(site, write_clips(tmp_path / "up", 3))
        assert (report.clips, report.quarantined) == (3, [])
        assert ingest(site, [tmp_path / "up"]).already_ingested == 3
        check = site.check(deep=True)
        assert check["ok"] and check["clips"] == 3
        assert all(path.startswith("clips/") for path in site.objects.sizes("clips"))


@pytest.mark.slow
def test_a_site_on_s3_with_keys_from_its_keystore(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _s3_project(tmp_path / "proj", s3_server)
    runner = CliRunner()
    args = ["store", "credentials", "--project", str(project.root), "--site", SITE]
    args += ["--access-key-id", s3_server.key, "--endpoint-url", s3_server.endpoint, "--json"]
    kept = runner.invoke(app, args, input=s3_server.secret + "\n")
    assert kept.exit_code == 0, kept.output
    said = json.loads(kept.stdout)
    assert said["access_key_id"] == s3_server.key and said["store_is_s3"] is True
    assert s3_server.secret not in kept.output
    path = project.keystore_path(project.site(SITE)) / S3_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    # The keystore's keys come before the environment's (here a wrong pair).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "WRONGKEYID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    _ingest_some(project, tmp_path)
    verify = ["store", "verify", "--project", str(project.root), "--site", SITE, "--json"]
    checked = runner.invoke(app, verify)
    assert checked.exit_code == 0, checked.output
    report = json.loads(checked.stdout)
    assert report["ok"] and report["credentials"] == "keystore"
    assert report["store"].startswith(f"s3://{s3_server.bucket}/")


@pytest.mark.slow
def test_a_site_on_s3_with_keys_from_the_environment(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _s3_project(tmp_path / "proj", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    with SiteStore.open(project, SITE) as site:
        assert site.objects.credentials_source == "environment"
    _ingest_some(project, tmp_path)


def test_keys_kept_from_the_environment_by_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = init_project(tmp_path / "proj", "three-regions")
    secret = uuid.uuid4().hex
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    args = ["store", "credentials", "--project", str(project.root), "--site", SITE, "--json"]
    result = CliRunner().invoke(app, [*args, "--access-key-id", "K", "--secret-from-env"])
    assert result.exit_code == 0, result.output
    assert secret not in result.output and json.loads(result.stdout)["store_is_s3"] is False
    folder = project.keystore_path(project.site(SITE))
    kept = load_s3_credentials(folder)
    assert kept is not None and kept.secret_access_key.reveal() == secret.encode()
    assert secret not in repr(kept)
    empty = CliRunner().invoke(app, [*args, "--access-key-id", "K"], input="")
    assert empty.exit_code != 0 and getattr(empty.exception, "code", None) == "config"
    (folder / S3_FILE).chmod(0o644)
    with pytest.raises(KeystoreError, match="can be read by others"):
        load_s3_credentials(folder)
    with pytest.raises(KeystoreError, match="no keystore"):
        save_s3_credentials(tmp_path / "nowhere", kept)


def _secret_free(secret: str, *texts: str) -> None:
    for text in texts:
        assert secret not in text


def test_a_wrong_secret_is_a_store_error_that_names_the_store_not_the_secret(
    s3_server: S3Server, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-" + uuid.uuid4().hex
    url = s3_server.url("wrong-secret")
    store = ObjectStore(url, credentials=_credentials(s3_server, wrong))
    local = tmp_path / "f"
    local.write_bytes(b"x")
    operations = {
        "put": lambda: store.put("a", b"x"),
        "put_many": lambda: store.put_many([("b", local)]),
        "read": lambda: store.read("a"),
        "exists": lambda: store.exists("a"),
        "size": lambda: store.size("a"),
        "find": lambda: list(store.find("")),
        "sizes": lambda: store.sizes(""),
        "delete": lambda: store.delete("a"),
    }
    started = time.monotonic()
    # First as a store just opened: its first request (a listing) is refused. Then as one
    # whose keys stopped working once it was open: each operation's own request is refused.
    for phase in ("opening", "operation"):
        store._probed = phase == "operation"
        for name, operation in operations.items():
            with pytest.raises(StoreError) as caught:
                operation()
            error = caught.value
            assert f"store {url}: the store refused the credentials (HTTP 403" in error.message
            assert error.message.startswith("cannot open store") == (phase == "opening"), name
            assert "check the site's S3 keys" in error.message, name
            assert "onshore store credentials" in (error.hint or "")
            _secret_free(wrong, str(error), json.dumps(error.to_dict()), repr(error))
            if phase == "opening":
                assert "(HTTP 403, SignatureDoesNotMatch)" in error.message
    assert time.monotonic() - started < 10, "refusals are reported at once, not retried"
    _secret_free(wrong, caplog.text, repr(store), store.url)


def test_a_bucket_removed_under_an_open_store_is_said(s3_server: S3Server) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(
        key=s3_server.key, secret=s3_server.secret, endpoint_url=s3_server.endpoint
    )
    bucket = f"gone-{uuid.uuid4().hex[:8]}"
    fs.mkdir(bucket)
    store = ObjectStore(f"s3://{bucket}/p", credentials=_credentials(s3_server))
    store.put("a", b"x")
    fs.rm(bucket, recursive=True)
    for operation in (lambda: store.put("b", b"y"), lambda: store.read("a")):
        with pytest.raises(StoreError, match=f"s3://{bucket}/p: the bucket '{bucket}' does not"):
            operation()


def test_a_wrong_secret_in_the_keystore_fails_verify_clearly(
    s3_server: S3Server, tmp_path: Path
) -> None:
    project = _s3_project(tmp_path / "proj", s3_server)
    wrong = "wrong-" + uuid.uuid4().hex
    save_s3_credentials(project.keystore_path(project.site(SITE)), _credentials(s3_server, wrong))
    args = ["store", "verify", "--project", str(project.root), "--site", SITE, "--json"]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, StoreError)
    said = result.exception.to_dict()
    assert said["error"] == "store" and said["exit_code"] == 6
    assert "refused the credentials" in said["message"] and "s3://onshore/proj-" in said["message"]
    assert "keystore" in said["hint"]
    _secret_free(wrong, json.dumps(said), result.output)


def test_a_missing_bucket_is_said_and_not_created(s3_server: S3Server) -> None:
    import s3fs

    bucket = f"missing-{uuid.uuid4().hex[:8]}"
    store = ObjectStore(f"s3://{bucket}/p", credentials=_credentials(s3_server))
    with pytest.raises(StoreError, match=f"the bucket '{bucket}' does not exist") as caught:
        store.put("clips/a", b"x")
    assert f"store s3://{bucket}/p" in caught.value.message
    with pytest.raises(StoreError, match="does not exist"):
        store.sizes("clips")
    fs = s3fs.S3FileSystem(
        key=s3_server.key, secret=s3_server.secret, endpoint_url=s3_server.endpoint
    )
    assert not fs.exists(bucket)


def test_an_unreachable_endpoint_is_said_promptly() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    creds = S3Credentials("K", Secret(b"unreachable-secret"), endpoint_url=endpoint)
    store = ObjectStore("s3://onshore/p", credentials=creds)
    started = time.monotonic()
    with pytest.raises(StoreError, match=f"cannot reach {endpoint}") as caught:
        store.read("clips/a")
    assert time.monotonic() - started < 15
    assert "s3://onshore/p" in caught.value.message
    assert "unreachable-secret" not in str(caught.value)
