"""A site's object store: clips as content-addressed Parquet, and the quarantine.

Any fsspec URL works (a local folder by default, ``memory://`` in tests, ``s3://bucket/prefix``
in production). Writes are atomic: on a local disk an object is written under ``.staging/``,
synced and renamed into place; on object stores a single PUT is already all-or-nothing. Readers
never see a partial object, and an object that exists is never rewritten.

An S3 store signs its requests with the credentials it is given (the site's keystore, see
:func:`onshore.sites.keystore.load_s3_credentials`), else with what every S3 tool reads:
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_REGION``, then
``~/.aws`` or an instance role. It fails fast (a few seconds, not minutes of retries) and in
words: every failure of the filesystem underneath is a :class:`StoreError` naming the store
(its URL without any password) and what went wrong, never the secret.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import fsspec
import orjson

from onshore.errors import ConfigError, StoreError
from onshore.settings import redact_url
from onshore.sites.keystore import S3Credentials

__all__ = [
    "CLIPS_DIR",
    "FRAMES_DIR",
    "QUARANTINE_DIR",
    "RECEIVED_DIR",
    "STAGING_DIR",
    "ZONES_PATH",
    "ObjectStore",
    "StoredObject",
    "sha256",
]

CLIPS_DIR: Final = "clips"
FRAMES_DIR: Final = "frames"
"""Camera frames of clips, one Parquet object per clip, beside the clips."""
QUARANTINE_DIR: Final = "quarantine"
RECEIVED_DIR: Final = "received"
"""Where a site keeps what it received from other sites. Nothing but :meth:`ObjectStore.receive`
writes there, and nothing but :mod:`onshore.transfer` calls it (a test reads the source tree to
hold that), so every byte that crossed from another site came through the gate."""
STAGING_DIR: Final = ".staging"
ZONES_PATH: Final = "reference/sensitive_areas.geojson"
"""Where a site keeps the GeoJSON of its sensitive areas (military, government zones)."""

_S3: Final = frozenset({"s3", "s3a"})
_S3_CONFIG: Final = {
    "connect_timeout": 5,
    "read_timeout": 30,
    "retries": {"mode": "standard", "total_max_attempts": 3},
}
"""botocore's settings for an S3 store: an endpoint that does not answer fails in seconds
(botocore's legacy defaults wait 60 s per attempt, five attempts), while a throttled or
briefly failing request is still retried."""
_S3FS_RETRIES: Final = 2
"""Times s3fs itself retries a timed-out or throttled call, on top of botocore (its default,
5, multiplies every timeout)."""
_WRITERS: Final = 8
"""Objects of one :meth:`ObjectStore.put_many` written at once."""
_REFUSED: Final = frozenset(
    {
        "403",
        "AccessDenied",
        "AuthorizationHeaderMalformed",
        "ExpiredToken",
        "Forbidden",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
    }
)
"""S3 error codes that mean the service would not take the request's credentials."""
_REFUSED_NAMED: Final = _REFUSED - {"403", "Forbidden"}


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``: the address of an object in a store."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredObject:
    """Where an object landed and whether this call wrote it."""

    path: str
    """Path relative to the store root."""
    size: int
    written: bool
    """False when the object was already there (idempotent put)."""


class ObjectStore:
    """A site's store at ``url``. All paths it returns are relative to the store root.

    ``credentials`` sign the requests of an ``s3://`` store in place of the environment's.
    A store pickles as its URL and credentials, and a copy unpickled in another process (a Ray
    worker) opens its filesystem afresh; the pickled bytes hold the secret, so they go only to
    the site's own processes.
    """

    def __init__(self, url: str, *, credentials: S3Credentials | None = None) -> None:
        self._open(url, credentials)

    @staticmethod
    def is_s3(url: str) -> bool:
        """Whether ``url`` is an S3 store's (``s3://`` or ``s3a://``), which takes S3
        credentials."""
        return (fsspec.core.split_protocol(url)[0] or "file") in _S3

    def _open(self, url: str, credentials: S3Credentials | None) -> None:
        self.url = redact_url(url)
        """The store's URL with any password replaced: safe for messages and logs."""
        self._source = url
        self._credentials = credentials
        self._s3 = self.is_s3(url)
        if credentials is not None and not self._s3:
            raise ConfigError(f"S3 credentials were given for store {self.url}, not an s3:// URL")
        try:
            fs, root = fsspec.core.url_to_fs(url, **self._options())
        except ImportError as exc:
            raise ConfigError(
                f"store {self.url} needs a package that is not installed: {exc}",
                hint="install onshore with its dependencies (pip install onshore)",
            ) from exc
        except ValueError as exc:
            raise ConfigError(f"cannot open store {self.url}: {exc}") from exc
        if self._s3:
            fs.retries = _S3FS_RETRIES
        self._fs: Any = fs
        self._root = str(root).rstrip("/")
        self._local = "file" in _protocols(fs)
        self._made: set[str] = set()
        """Folders this store has created or found, so each is made once per process."""
        self._probed = not self._s3

    def _options(self) -> dict[str, Any]:
        """What fsspec's filesystem for the URL takes: for S3, timeouts, retries and any
        credentials given; nothing for other stores."""
        if not self._s3:
            return {}
        options: dict[str, Any] = {
            "config_kwargs": _S3_CONFIG,
            # A listing cached by one process would hide objects that another wrote since.
            "use_listings_cache": False,
            # fsspec's cache of filesystems keys them by these options, not by the AWS_*
            # environment: each store resolves its own credentials when it is opened.
            "skip_instance_cache": True,
        }
        creds = self._credentials
        if creds is not None:
            options["key"] = creds.access_key_id
            options["secret"] = creds.secret_access_key.reveal().decode()
            if creds.endpoint_url:
                options["endpoint_url"] = creds.endpoint_url
            if creds.region:
                options["client_kwargs"] = {"region_name": creds.region}
        return options

    @property
    def credentials_source(self) -> str | None:
        """Where an S3 store's credentials come from: ``keystore`` (given, from the site's
        keystore), ``environment`` (``AWS_ACCESS_KEY_ID``), or ``default`` (botocore's chain:
        ``~/.aws`` files, a container or instance role). None for other stores."""
        if not self._s3:
            return None
        if self._credentials is not None:
            return "keystore"
        if os.environ.get("AWS_ACCESS_KEY_ID"):
            return "environment"
        return "default"

    @property
    def endpoint(self) -> str | None:
        """The S3 service an ``s3://`` store talks to (None: AWS's own, or not S3)."""
        if not self._s3:
            return None
        if self._credentials is not None and self._credentials.endpoint_url:
            return self._credentials.endpoint_url
        return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")

    def __repr__(self) -> str:
        return f"ObjectStore({self.url!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self._source, "credentials": self._credentials}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._open(state["url"], state["credentials"])

    def probe(self) -> None:
        """Check that the store answers to its credentials and that its bucket exists: one
        listing request on S3, nothing on other stores.

        Every operation does this once per process before its first request; call it to learn
        early. Raises :class:`StoreError` saying what is wrong.
        """
        if self._probed:
            return
        bucket, _, prefix = self._root.partition("/")
        with self._translated("open"):
            self._fs.call_s3(
                "list_objects_v2", Bucket=bucket, Prefix=f"{prefix}/" if prefix else "", MaxKeys=1
            )
        self._probed = True

    @contextlib.contextmanager
    def _failures(self, doing: str, *, source: Path | None = None) -> Iterator[None]:
        """Probe the store once, then raise the filesystem's failures as :class:`StoreError`
        (see :meth:`_translated`)."""
        self.probe()
        with self._translated(doing, source=source):
            yield

    @contextlib.contextmanager
    def _translated(self, doing: str, *, source: Path | None = None) -> Iterator[None]:
        """Raise the filesystem's failures as :class:`StoreError`: ``cannot <doing> store
        <url>: <why>``. A local ``source`` file that cannot be read is the caller's, and its
        error passes as it is; so does anything that is not a failure of the store (a bug)."""
        try:
            yield
        except StoreError:
            raise
        except Exception as exc:
            if isinstance(exc, OSError) and source is not None and exc.filename == str(source):
                raise
            error = self._error(exc, f"cannot {doing} store {self.url}")
            if error is None:
                raise
            raise error from exc

    def _error(self, exc: Exception, where: str) -> StoreError | None:
        """The StoreError that says in words why ``exc`` happened, or None when ``exc`` is not a
        failure of the store."""
        if not self._s3:
            return StoreError(f"{where}: {exc}") if isinstance(exc, OSError) else None
        code, status, text = _client_error(exc)
        unreachable = _unreachable(exc) if code is None else None
        error: StoreError | None = None
        if code in _REFUSED or status == 403 or (code is None and isinstance(exc, PermissionError)):
            said = ", ".join([f"HTTP {status or 403}"] + ([code] if code in _REFUSED_NAMED else []))
            error = StoreError(
                f"{where}: the store refused the credentials ({said}): check the site's S3 keys",
                hint=_CREDENTIALS_HINT[self.credentials_source or "default"],
            )
        elif code == "NoSuchBucket":
            error = StoreError(
                f"{where}: the bucket {self._root.split('/', 1)[0]!r} does not exist",
                hint="create it, or correct the store URL in onshore.toml",
            )
        elif code is not None:
            answered = f"HTTP {status} {code}" if status else code
            error = StoreError(f"{where}: the store answered {answered}: {text}")
        elif unreachable is not None:
            endpoint, why = unreachable
            error = StoreError(
                f"{where}: cannot reach {endpoint or self.endpoint or 'AWS S3'}: {why}",
                hint="check the endpoint URL (AWS_ENDPOINT_URL or the keystore's), the network, "
                "and that the S3 service is up",
            )
        elif type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
            error = StoreError(
                f"{where}: no S3 credentials were found", hint=_CREDENTIALS_HINT["default"]
            )
        elif isinstance(exc, OSError | TimeoutError) or _from_s3_client(exc):
            error = StoreError(f"{where}: {exc}")
        # No message above holds a secret; made sure of, as some hold a server's or a library's.
        secrets = [os.environ.get("AWS_SECRET_ACCESS_KEY", "")]
        if self._credentials is not None:
            secrets.append(self._credentials.secret_access_key.reveal().decode())
        for secret in filter(None, secrets):
            if error is not None and secret in str(error):
                error = StoreError(error.message.replace(secret, "***"), hint=error.hint)
        return error

    def _abs(self, path: str) -> str:
        return f"{self._root}/{path}"

    @staticmethod
    def clip_path(digest: str) -> str:
        """Where the clip whose Parquet hashes to ``digest`` lives."""
        return f"{CLIPS_DIR}/{digest[:2]}/{digest}.parquet"

    @staticmethod
    def frames_path(digest: str) -> str:
        """Where the frames object whose Parquet hashes to ``digest`` lives."""
        return f"{FRAMES_DIR}/{digest[:2]}/{digest}.parquet"

    def put(self, path: str, data: bytes) -> StoredObject:
        """Write ``data`` at ``path`` atomically and durably, unless an object is there."""
        (stored,) = self.put_many([(path, data)])
        return stored

    def put_many(self, items: Sequence[tuple[str, bytes | Path]]) -> list[StoredObject]:
        """Write several objects as :meth:`put` does, each given as bytes or as a local file to
        copy (streamed, never read whole). On a local disk each folder they land in is synced
        once for the lot rather than once per object. When this returns, every object is
        durable. An error reading a source file is raised as it is (``OSError``).

        Refuses paths under :data:`RECEIVED_DIR`: data from another site arrives only through
        :meth:`receive`.
        """
        for path, _ in items:
            if _received(path):
                raise StoreError(
                    f"{path}: only a transfer through the gate writes under {RECEIVED_DIR}/",
                    hint="move data between sites with 'onshore transfer'",
                )
        return self._put_many(items)

    def receive(
        self, items: Sequence[tuple[str, bytes | Path]], *, synced: bool = False
    ) -> list[StoredObject]:
        """Write objects another site sent, under :data:`RECEIVED_DIR`, as :meth:`put_many`
        writes (a file from :meth:`incoming_file` is moved into place, not copied). Only
        :mod:`onshore.transfer` calls this, after the sending site's gate allowed the transfer
        and recorded it in its signed ledger, and after every object's hash was checked.
        ``synced``: the caller made the files from :meth:`incoming_file` durable already."""
        for path, _ in items:
            if not _received(path):
                raise StoreError(f"{path}: received data must go under {RECEIVED_DIR}/")
        return self._put_many(list(items), synced=synced)

    def _put_many(
        self, items: Sequence[tuple[str, bytes | Path]], *, synced: bool = False
    ) -> list[StoredObject]:
        stored: list[StoredObject] = []
        writes: dict[str, tuple[str, bytes | Path]] = {}
        for path, content in items:
            size = len(content) if isinstance(content, bytes) else content.stat().st_size
            target = self._abs(path)
            source = None if isinstance(content, bytes) else content
            with self._failures(f"write {path} to", source=source):
                if target in writes or self._fs.exists(target):
                    # There already, or a second copy in this call: written once.
                    stored.append(StoredObject(path, size, written=False))
                    continue
                parent = target.rsplit("/", 1)[0]
                # S3 has no folders to make, and s3fs's makedirs would create a missing bucket.
                if parent not in self._made and not self._s3:
                    self._fs.makedirs(parent, exist_ok=True)
                    self._made.add(parent)
            writes[target] = (path, content)
            stored.append(StoredObject(path, size, written=True))
        self._write_all(list(writes.items()), synced=synced)
        return stored

    def _write_all(
        self, writes: list[tuple[str, tuple[str, bytes | Path]]], *, synced: bool
    ) -> None:
        """Write each ``(target, (path, content))``, several at once: a local disk merges the
        syncs of concurrent writes into fewer journal commits, and S3 takes parallel uploads.
        When this returns every object is durable (on a local disk, its folder synced too)."""
        if not writes:
            return

        def write(target: str, path: str, content: bytes | Path) -> None:
            source = None if isinstance(content, bytes) else content
            with self._translated(f"write {path} to", source=source):
                if self._local:
                    self._write_local(target, content, synced=synced)
                elif isinstance(content, bytes):
                    self._fs.pipe_file(target, content)
                else:
                    self._fs.put_file(str(content), target)

        if self._local:
            self._staging_name()  # the staging folder, made once, before the threads
        if len(writes) == 1:
            ((target, (path, content)),) = writes
            write(target, path, content)
        else:
            with ThreadPoolExecutor(min(_WRITERS, len(writes))) as pool:
                done = [pool.submit(write, t, p, c) for t, (p, c) in writes]
                for future in done:
                    future.result()
        if not self._local:
            return
        with self._failures("sync"):
            for folder in sorted({target.rsplit("/", 1)[0] for target, _ in writes}):
                # The rename is durable only once its folder is: before the catalogue says so.
                dir_fd = os.open(folder, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)

    def incoming_file(self) -> Path:
        """A fresh file to write an arriving object into: in the store's staging folder on a
        local disk (so :meth:`receive` renames it into place), else in the system's temporary
        folder. The caller deletes it if it is not received."""
        if self._local:
            return Path(self._staging_name())
        import tempfile

        fd, name = tempfile.mkstemp(prefix="onshore-incoming-", suffix=".part")
        os.close(fd)
        return Path(name)

    def _staging_name(self) -> str:
        staging = self._abs(STAGING_DIR)
        if staging not in self._made:
            os.makedirs(staging, exist_ok=True)
            self._made.add(staging)
        return f"{staging}/{os.getpid()}-{uuid.uuid4().hex}.part"

    def _write_local(self, target: str, content: bytes | Path, *, synced: bool = False) -> None:
        """Write a local file aside, make it durable, then rename it into place."""
        if isinstance(content, Path) and content.parent == Path(self._abs(STAGING_DIR)):
            # An arriving object already written into staging: make it durable, move it.
            if not synced:
                with open(content, "rb") as f:
                    os.fdatasync(f.fileno())
            os.replace(content, target)
            return
        part = self._staging_name()
        try:
            with open(part, "wb") as f:
                if isinstance(content, bytes):
                    f.write(content)
                else:
                    with content.open("rb") as src:
                        shutil.copyfileobj(src, f, 1 << 20)
                f.flush()
                os.fdatasync(f.fileno())
            os.replace(part, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)

    def read(self, path: str) -> bytes:
        """The bytes of the object at ``path``; raises :class:`StoreError` if there is none or
        the store fails."""
        with self._failures(f"read {path} from"):
            try:
                return bytes(self._fs.cat_file(self._abs(path)))
            except FileNotFoundError as exc:
                if _client_error(exc)[0] == "NoSuchBucket":
                    raise
                raise StoreError(f"{path} is not in store {self.url}") from None

    def exists(self, path: str) -> bool:
        """Whether an object is at ``path``."""
        with self._failures(f"look for {path} in"):
            return bool(self._fs.exists(self._abs(path)))

    def size(self, path: str) -> int:
        """The size in bytes of the object at ``path``."""
        with self._failures(f"size {path} in"):
            return int(self._fs.size(self._abs(path)))

    def delete(self, path: str) -> None:
        """Remove the object at ``path``, if there is one."""
        with self._failures(f"delete {path} from"), contextlib.suppress(FileNotFoundError):
            self._fs.rm_file(self._abs(path))

    def find(self, prefix: str) -> Iterator[str]:
        """Paths of the objects below ``prefix``, sorted."""
        base = self._abs(prefix)
        with self._failures(f"list {prefix} in"):
            found = sorted(self._fs.find(base)) if self._fs.exists(base) else []
        strip = len(self._root) + 1
        for name in found:
            yield str(name)[strip:] if str(name).startswith(self._root) else str(name)

    def sizes(self, prefix: str) -> dict[str, int]:
        """Size of every object below ``prefix``, from one listing (one request on S3)."""
        base = self._abs(prefix)
        with self._failures(f"list {prefix} in"):
            if not self._fs.exists(base):
                return {}
            found = self._fs.find(base, detail=True)
        strip = len(self._root) + 1
        return {str(k)[strip:]: int(v["size"]) for k, v in found.items()}

    def clip_digests(self) -> Iterator[tuple[str, str]]:
        """(digest, path) of every clip object in the store."""
        for path in self.find(CLIPS_DIR):
            name = path.rsplit("/", 1)[-1]
            if name.endswith(".parquet"):
                yield name.removesuffix(".parquet"), path

    def quarantine_file(self, source: Path, digest: str, reason: dict[str, Any]) -> str:
        """Keep a rejected local file, copied without reading it into memory, with a JSON note
        of why; returns its store path. Named by content hash and name, so quarantining the
        same file again writes nothing new."""
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in source.name)[-120:]
        path = f"{QUARANTINE_DIR}/{digest[:16]}-{safe}"
        note = {**reason, "quarantined_at": datetime.now(UTC).isoformat(timespec="seconds")}
        self.put_file(path, source)
        self.put(f"{path}.reason.json", orjson.dumps(note, option=orjson.OPT_INDENT_2))
        return path

    def put_file(self, path: str, source: Path) -> StoredObject:
        """Copy the local file ``source`` to ``path``, as :meth:`put` writes bytes."""
        (stored,) = self.put_many([(path, source)])
        return stored

    def staging_leftovers(self) -> list[str]:
        """Partial writes left by a process that died (only local stores stage writes)."""
        if not self._local:
            return []
        staging = self._abs(STAGING_DIR)
        if not os.path.isdir(staging):
            return []
        return [
            f"{STAGING_DIR}/{name}"
            for name in sorted(os.listdir(staging))
            if not _pid_alive(name.split("-", 1)[0])
        ]

    def clean_staging(self) -> int:
        """Remove partial writes of dead processes; returns how many were removed."""
        leftovers = self.staging_leftovers()
        for path in leftovers:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._abs(path))
        return len(leftovers)


def _received(path: str) -> bool:
    """Whether ``path`` lies under :data:`RECEIVED_DIR`; refuses a path that climbs (``..``),
    which could reach there, or out of the store, from anywhere."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise StoreError(f"{path}: store paths may not contain '..'")
    return bool(parts) and parts[0] == RECEIVED_DIR


_CREDENTIALS_HINT: Final = {
    "keystore": "the keys are the site's keystore's: set them again with 'onshore store "
    "credentials'",
    "environment": "the keys are AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY of the environment "
    "(the site's keystore has none)",
    "default": "put the site's keys in its keystore with 'onshore store credentials', or set "
    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
}


_UNREACHABLE: Final = {
    "EndpointConnectionError": "the connection failed",
    "ConnectTimeoutError": "the connection timed out",
    "ReadTimeoutError": "no answer in time",
    "ConnectionClosedError": "the connection was closed",
    "ProxyConnectionError": "the proxy could not be reached",
    "ClientConnectorError": "the connection failed",
    "ClientConnectorDNSError": "the host name does not resolve",
    "ServerTimeoutError": "no answer in time",
    "ConnectionRefusedError": "the connection was refused",
    "gaierror": "the host name does not resolve",
}
"""What each error class (by name: botocore's, aiohttp's, the socket's) says of a service that
could not be reached."""


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it was raised from (s3fs raises botocore's errors as ``OSError``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _client_error(exc: BaseException) -> tuple[str | None, int | None, str]:
    """The S3 error code, HTTP status and message of the service's answer behind ``exc``, if
    the service answered (botocore's ``ClientError``, which s3fs raises from)."""
    for cause in _causes(exc):
        response = getattr(cause, "response", None)
        if isinstance(response, dict) and isinstance(response.get("Error"), dict):
            error, meta = response["Error"], response.get("ResponseMetadata") or {}
            status = meta.get("HTTPStatusCode")
            code = error.get("Code")
            return (
                str(code) if code else None,
                int(status) if isinstance(status, int) else None,
                str(error.get("Message") or ""),
            )
    return None, None, ""


def _unreachable(exc: BaseException) -> tuple[str | None, str] | None:
    """(endpoint, why) when ``exc`` says the S3 service could not be reached or did not
    answer in time; None otherwise. ``why`` is the most precise cause found (botocore's error
    wraps aiohttp's, which wraps the socket's)."""
    endpoint, why = None, None
    for cause in _causes(exc):
        found = next(
            (_UNREACHABLE[c.__name__] for c in type(cause).__mro__ if c.__name__ in _UNREACHABLE),
            None,
        )
        if found is None:
            continue
        why = found
        url = getattr(cause, "kwargs", {}).get("endpoint_url")
        if endpoint is None and isinstance(url, str):
            parts = urlsplit(url)
            endpoint = redact_url(f"{parts.scheme}://{parts.netloc}")
    return None if why is None else (endpoint, why)


def _from_s3_client(exc: BaseException) -> bool:
    """Whether ``exc`` comes from the S3 client's libraries (botocore, aiohttp)."""
    module = type(exc).__module__.split(".", 1)[0]
    return module in ("botocore", "aiobotocore", "aiohttp", "s3fs")


def _protocols(fs: Any) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def _pid_alive(text: str) -> bool:
    if not text.isdigit():
        return False
    try:
        os.kill(int(text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
