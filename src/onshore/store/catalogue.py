"""A site's catalogue: which clips, vehicles and files the site holds, in any SQL database.

SQLAlchemy Core over SQLite by default and PostgreSQL in production; the contract tests run the
same suite against both. Every table carries the site id, so several sites may share a database
in development without seeing each other's rows. A file's clips, their vehicles and the file
itself are registered in one transaction: either all of it is in the catalogue or none is.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from itertools import islice
from typing import Any, Final, NoReturn, TypeVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    event,
    false,
    func,
    inspect,
    literal,
    select,
    tuple_,
)
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import (
    ArgumentError,
    IntegrityError,
    OperationalError,
    ProgrammingError,
    SQLAlchemyError,
)
from sqlalchemy.schema import CreateColumn
from sqlalchemy.sql import FromClause, Select

from onshore.errors import CatalogueError, ClipConflict, ConfigError
from onshore.settings import redact_url

__all__ = [
    "Catalogue",
    "ClipRecord",
    "DeidentifiedRecord",
    "FileRecord",
    "FramesRecord",
    "LabelRecord",
    "create_tables",
    "is_training",
    "withdrawal_covers",
]

SCHEMA_VERSION: Final = 1
"""Bumped only by changes an older onshore would get wrong. A column added with a server
default (see :func:`add_missing_columns`) is not one: an older onshore's inserts get the
default."""
_RETRIES: Final = 5
_CONNECT_TIMEOUT_S: Final = 10
"""Seconds to wait for a PostgreSQL server to accept a connection."""
_T = TypeVar("_T")
_R = TypeVar("_R", "FileRecord", "ClipRecord", "LabelRecord", "DeidentifiedRecord", "FramesRecord")

_metadata = MetaData()

CLIP_SORTS: Final = ("start", "vin", "trigger", "bytes", "rows")
"""What :meth:`Catalogue.clip_page` sorts clips by."""

_files = Table(
    "files",
    _metadata,
    Column("site", String(64), primary_key=True),
    Column("sha256", String(64), primary_key=True),
    Column("path", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("error_code", String(64)),
    Column("reason", Text),
    Column("clips", Integer, nullable=False),
    Column("quarantine_path", Text),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)

_vehicles = Table(
    "vehicles",
    _metadata,
    Column("site", String(64), primary_key=True),
    Column("vin", String(17), primary_key=True),
    Column("vehicle_model", Text, nullable=False),
)

_clips = Table(
    "clips",
    _metadata,
    Column("site", String(64), primary_key=True),
    Column("clip_id", String(200), primary_key=True),
    Column("sha256", String(64), nullable=False, index=True),
    Column("path", Text, nullable=False),
    Column("vin", String(17), nullable=False, index=True),
    Column("vehicle_model", Text, nullable=False),
    Column("trigger", String(32), nullable=False),
    Column("consent_training", Boolean, nullable=False),
    Column("recorded_in", String(64), nullable=False),
    Column("simulated", Boolean, nullable=False, server_default=false()),
    Column("start_time", DateTime(timezone=True), nullable=False),
    Column("end_time", DateTime(timezone=True), nullable=False),
    Column("rows", Integer, nullable=False),
    Column("objects", Integer, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("min_lat", Float, nullable=False),
    Column("max_lat", Float, nullable=False),
    Column("min_lon", Float, nullable=False),
    Column("max_lon", Float, nullable=False),
    Column("source_sha256", String(64), nullable=False),
    Column("ingested_at", DateTime(timezone=True), nullable=False),
    Index("ix_clips_site_vin", "site", "vin"),
    Index("ix_clips_site_start", "site", "start_time", "clip_id"),
)

_frames = Table(
    "frames",
    _metadata,
    Column("site", String(64), primary_key=True),
    Column("clip_id", String(200), primary_key=True),
    Column("sha256", String(64), nullable=False),
    Column("path", Text, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("frames", Integer, nullable=False),
    Column("cameras", Text, nullable=False),
)

_labels = Table(
    "labels",
    _metadata,
    Column("site", String(64), primary_key=True),
    Column("clip_id", String(200), primary_key=True),
    Column("category", String(64), primary_key=True),
    Column("count", Integer, nullable=False),
    Column("evidence", Text, nullable=False),
    Column("classified_at", DateTime(timezone=True), nullable=False),
    Index("ix_labels_site_category", "site", "category", "clip_id"),
)

_deidentified = Table(
    "deidentified",
    _metadata,
    Column("site", String(64), primary_key=True),
    Column("profile", String(64), primary_key=True),
    Column("clip_id", String(200), primary_key=True),
    Column("source_sha256", String(64), nullable=False),
    Column("output_id", String(64), nullable=False),
    Column("path", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("consent_training", Boolean, nullable=False),
    Column("rows", Integer, nullable=False),
    Column("rows_in", Integer, nullable=False),
    Column("detail", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("vin", String(17), nullable=False, server_default=""),
    Index("ix_deidentified_vin", "site", "vin"),
)

_dataset_vehicles = Table(
    "dataset_vehicles",
    _metadata,
    Column("site", String(64), primary_key=True),
    Column("dataset", String(64), primary_key=True),
    Column("category", String(80), primary_key=True),
    Column("vin", String(17), primary_key=True),
    Column("clips", Integer, nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Index("ix_dataset_vehicles_vin", "site", "dataset", "vin"),
)
"""Each vehicle's share of each dataset a plan asks about (the consenting drivers' clips raw,
``dataset`` "", or their outputs under a profile): per ``category`` "" its clips, rows and
bytes; per label category its clips and the persons or plates seen; per ``state:<state>`` its
outputs in that state. Recomputed for the vehicles a write touches."""

_dataset_sums = Table(
    "dataset_totals",
    _metadata,
    Column("site", String(64), primary_key=True),
    Column("dataset", String(64), primary_key=True),
    Column("category", String(80), primary_key=True),
    Column("clips", BigInteger, nullable=False),
    Column("vehicles", BigInteger, nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
)
""":data:`_dataset_vehicles` summed over the vehicles, kept by the same writes (by the
difference each makes), so that reading a dataset's totals reads a handful of rows."""

_withdrawals = Table(
    "consent_withdrawals",
    _metadata,
    Column("site", String(64), primary_key=True),
    Column("vin", String(17), primary_key=True),
    Column("purpose", String(64), primary_key=True),
    Column("withdrawn_at", DateTime(timezone=True), nullable=False),
    Column("ledger_seq", BigInteger, nullable=False),
)
"""A driver's consent withdrawn for a purpose (``onshore consent withdraw``): from then on the
vehicle's clips serve no such purpose. ``all`` covers every purpose and ``training`` every
training purpose (``training`` or a name ending ``_training``)."""

_meta = Table(
    "onshore_meta",
    _metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)


@dataclass(frozen=True, slots=True)
class FileRecord:
    """An input file the site has seen, and what became of it."""

    sha256: str
    path: str
    size: int
    status: str
    """``ingested`` or ``quarantined``."""
    clips: int = 0
    error_code: str | None = None
    reason: str | None = None
    quarantine_path: str | None = None
    recorded_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ClipRecord:
    """One stored clip, as the catalogue knows it."""

    clip_id: str
    sha256: str
    path: str
    vin: str
    vehicle_model: str
    trigger: str
    consent_training: bool
    recorded_in: str
    start_time: datetime
    end_time: datetime
    rows: int
    objects: int
    bytes: int
    min_lat: float
    max_lat: float
    min_lon: float
    max_lon: float
    source_sha256: str
    simulated: bool = False
    """Made by a simulator (``onshore fleet simulate``), not recorded by a vehicle."""
    ingested_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class FramesRecord:
    """The camera frames stored for one clip."""

    clip_id: str
    sha256: str
    path: str
    bytes: int
    frames: int
    cameras: str
    """The cameras and their frame counts, as ``name:count`` joined by commas, sorted."""

    def camera_counts(self) -> dict[str, int]:
        """Frames per camera."""
        pairs = (item.rsplit(":", 1) for item in self.cameras.split(",") if item)
        return {name: int(count) for name, count in pairs}


@dataclass(frozen=True, slots=True)
class LabelRecord:
    """One data category found in a clip, with how much of it and the evidence."""

    clip_id: str
    category: str
    count: int
    """Rows, positions or objects that carry the category (what ``evidence`` counts)."""
    evidence: str


@dataclass(frozen=True, slots=True)
class DeidentifiedRecord:
    """The de-identified version of one raw clip under one profile."""

    profile: str
    clip_id: str
    """The raw clip's id (the catalogue is inside the site; outputs never carry it)."""
    source_sha256: str
    output_id: str
    """The id the output carries instead: a keyed pseudonym of the clip id."""
    path: str
    sha256: str
    state: str
    consent_training: bool
    rows: int
    rows_in: int
    detail: str
    """JSON: the transforms with their parameters and what each removed, and the checks."""
    vin: str = ""
    """The raw clip's vehicle (inside the site, as :attr:`clip_id`; outputs never carry it):
    what an erasure or a withdrawal finds the output by once the raw clip's storage period
    has ended and its row is gone. Empty in rows written before it was kept."""


def is_training(purpose: str) -> bool:
    """Whether ``purpose`` trains models: ``training`` or a name ending ``_training``."""
    return purpose == "training" or purpose.endswith("_training")


def withdrawal_covers(withdrawn: str, purpose: str) -> bool:
    """Whether consent withdrawn for ``withdrawn`` excludes a use for ``purpose``: the same
    purpose, ``all``, or ``training`` for every training purpose. A site's training samples
    serve every training purpose (``purpose`` ``training``), so a withdrawal from any of them
    keeps the vehicle out."""
    if withdrawn in (purpose, "all"):
        return True
    if withdrawn == "training":
        return is_training(purpose)
    return purpose == "training" and is_training(withdrawn)


def create_tables(metadata: MetaData, engine: Engine) -> None:
    """Create ``metadata``'s tables in a site's database if missing: the tables another
    module keeps beside the catalogue's (transfers received, erasure requests). Two processes
    may race to make them; both end up fine."""
    for attempt in range(_RETRIES):
        try:
            metadata.create_all(engine)
            return
        except (OperationalError, ProgrammingError, IntegrityError):
            # Another process made them at the same moment: the next look finds them.
            if attempt == _RETRIES - 1:
                raise
            time.sleep(0.05 * 2**attempt * (1 + random.random()))


def _fields(
    record: FileRecord | ClipRecord | LabelRecord | DeidentifiedRecord | FramesRecord,
) -> dict[str, Any]:
    """A record's fields as a dict (``asdict`` deep-copies every value; these are immutable)."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


def _by_profile(rows: Sequence[Any]) -> dict[str, dict[str, int]]:
    """Clips per state, per de-identification profile."""
    out: dict[str, dict[str, int]] = {}
    for profile, state, n in rows:
        out.setdefault(profile, {})[state] = int(n)
    return out


_INSERT_ROWS: Final = 1000
"""Rows inserted per statement where a write streams its rows."""
_PAGE_ROWS: Final = 2000
"""Rows a paged read (:meth:`Catalogue.clip_pages`) takes per query."""


def _add_missing_indexes(conn: Connection) -> None:
    """Create the indexes added since a catalogue's tables were made (``create_all`` makes an
    index only with its table): a vehicle's clips found by site and VIN."""
    have = {
        (table, index["name"])
        for table in ("clips", "dataset_vehicles", "deidentified")
        for index in inspect(conn).get_indexes(table)
    }
    for table in (_clips, _dataset_vehicles, _deidentified):
        for index in table.indexes:
            if (table.name, index.name) not in have:
                index.create(conn, checkfirst=True)


def _batches(values: Iterable[_T], size: int = 500) -> Iterator[list[_T]]:
    """``values`` in lists of ``size`` (by default small enough for an SQL ``IN`` list on every
    backend), taken as they come: a stream is never held whole."""
    pending = iter(values)
    while batch := list(islice(pending, size)):
        yield batch


def _utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every time onshore stores is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def add_missing_columns(conn: Connection, metadata: MetaData = _metadata) -> None:
    """Add the columns that a catalogue made by an earlier onshore lacks (in the tables of
    ``metadata``: the catalogue's own, or another package's kept in the same database).

    ``create_all`` makes missing tables but never alters one that exists. Each column added
    since a table was first released has a server default, which fills the rows already there
    (``simulated``: false, since every clip catalogued before the flag was ingested as recorded).
    """
    inspector = inspect(conn)
    prepare = conn.dialect.identifier_preparer
    for table in metadata.sorted_tables:
        have = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have:
                spec = CreateColumn(column).compile(dialect=conn.dialect)
                conn.exec_driver_sql(f"ALTER TABLE {prepare.format_table(table)} ADD COLUMN {spec}")
        # Indexes added since too (create_all makes those of new tables only).
        for index in table.indexes:
            index.create(conn, checkfirst=True)


def _row_to(cls: type[_R], row: Any) -> _R:
    names = {f.name for f in fields(cls)}
    values = {k: v for k, v in row._mapping.items() if k in names}
    for key, value in values.items():
        if isinstance(value, datetime):
            values[key] = _utc(value)
    return cls(**values)


class Catalogue:
    """The catalogue of ``site`` in the database at ``url`` (created on first use)."""

    def __init__(self, url: str, site: str) -> None:
        self.site = site
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise ConfigError(
                f"catalogue URL {redact_url(url)!r} is not a SQLAlchemy URL",
                hint="e.g. sqlite:///path/catalogue.sqlite or postgresql+psycopg://user@host/db",
            ) from exc
        self.url = parsed.render_as_string(hide_password=True)
        try:
            self._engine = self._connect(url, parsed.get_backend_name())
        except (SQLAlchemyError, ModuleNotFoundError) as exc:
            raise CatalogueError(f"cannot open catalogue {self.url}: {exc}") from exc
        self._reach(parsed)
        self._create_schema()

    def _reach(self, parsed: URL) -> None:
        """Connect once, so that a database that cannot be reached is said to be so, within
        the connect timeout (the pool keeps the connection for what follows). A new SQLite
        file that another process is creating this moment may refuse the first connection
        (its switch to WAL answers "locked" at once): that one is tried again."""
        for attempt in range(_RETRIES):
            try:
                with self._engine.connect():
                    return
            except OperationalError as exc:
                locked = "locked" in str(exc.orig or exc) and parsed.get_backend_name() == "sqlite"
                if not locked or attempt == _RETRIES - 1:
                    self._unreachable(parsed, exc)
                time.sleep(0.05 * 2**attempt * (1 + random.random()))

    def _unreachable(self, parsed: URL, exc: OperationalError) -> NoReturn:
        """Say why the database cannot be reached (its password never in the message)."""
        self._engine.dispose()
        why = (str(exc.orig or exc).strip().splitlines() or ["no reason given"])[0]
        if parsed.password:
            why = why.replace(str(parsed.password), "***")
        if parsed.get_backend_name() == "sqlite":
            raise CatalogueError(f"cannot open catalogue {self.url}: {why}") from None
        # Not chained: the driver's error is summed up above, and only that is vetted.
        raise CatalogueError(
            f"cannot reach catalogue {self.url}: {why}",
            hint="check that the database server is up and reachable from here, and the "
            "catalogue URL in onshore.toml",
        ) from None

    def _create_schema(self) -> None:
        """Create the tables on first use and refuse a catalogue a newer onshore wrote."""
        for attempt in range(_RETRIES):
            try:
                # Two processes opening a new catalogue at once may both find a table (or, in
                # an old one, a column) missing; the loser's CREATE or ALTER fails, and its
                # next look finds it there.
                _metadata.create_all(self._engine)
                with self._engine.begin() as conn:
                    add_missing_columns(conn)
                    _add_missing_indexes(conn)
                    found = conn.execute(
                        select(_meta.c.value).where(_meta.c.key == "schema")
                    ).scalar()
                    if found is None:
                        conn.execute(_meta.insert().values(key="schema", value=str(SCHEMA_VERSION)))
                break
            except (OperationalError, ProgrammingError, IntegrityError) as exc:
                if attempt == _RETRIES - 1:
                    raise CatalogueError(f"cannot open catalogue {self.url}: {exc}") from exc
                # The other opener is mid-way through the same DDL: give it time to finish.
                time.sleep(0.05 * 2**attempt * (1 + random.random()))
            except (SQLAlchemyError, ModuleNotFoundError) as exc:
                raise CatalogueError(f"cannot open catalogue {self.url}: {exc}") from exc
        if found is not None and int(found) > SCHEMA_VERSION:
            raise CatalogueError(
                f"catalogue {self.url} has schema version {found}; this onshore knows up to "
                f"{SCHEMA_VERSION}",
                hint="upgrade onshore; an older one must not write to a newer catalogue",
            )

    @staticmethod
    def _connect(url: str, backend: str) -> Engine:
        if backend == "postgresql":
            # libpq waits for ever on a host that drops packets; a catalogue that does not
            # answer in seconds is reported, not waited for.
            return create_engine(
                url, pool_pre_ping=True, connect_args={"connect_timeout": _CONNECT_TIMEOUT_S}
            )
        if backend != "sqlite":
            return create_engine(url, pool_pre_ping=True)
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            # WAL: readers (inventory, the console) never block ingest. NORMAL sync in WAL mode
            # may lose the last commits on power loss but never corrupts; ingest re-registers
            # what a lost commit dropped, since store objects are written first.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            # What a delete removes (an erasure, a retention run) is overwritten with zeros
            # in the database file, not left readable in its free pages.
            cursor.execute("PRAGMA secure_delete=ON")
            cursor.close()

        return engine

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    @property
    def engine(self) -> Engine:
        """The database engine, for the site's other tables (approvals, ledger) to share: they
        live in the same database so one transaction can cover a catalogue change and its
        ledger entry."""
        return self._engine

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One database transaction, committed on exit; a lost connection is a CatalogueError."""
        with self._tx() as conn:
            yield conn

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self._engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            raise CatalogueError(f"catalogue {self.url} failed: {exc.orig}") from exc

    def file(self, sha256: str) -> FileRecord | None:
        """The record of the file with this content hash, if the site has seen it."""
        with self._tx() as conn:
            row = conn.execute(
                select(_files).where(_files.c.site == self.site, _files.c.sha256 == sha256)
            ).first()
        return None if row is None else _row_to(FileRecord, row)

    def clip(self, clip_id: str) -> ClipRecord | None:
        with self._tx() as conn:
            row = conn.execute(
                select(_clips).where(_clips.c.site == self.site, _clips.c.clip_id == clip_id)
            ).first()
        return None if row is None else _row_to(ClipRecord, row)

    def clips(self) -> list[ClipRecord]:
        """Every clip of the site, oldest first."""
        with self._tx() as conn:
            rows = conn.execute(
                select(_clips)
                .where(_clips.c.site == self.site)
                .order_by(_clips.c.start_time, _clips.c.clip_id)
            ).all()
        return [_row_to(ClipRecord, r) for r in rows]

    def clip_count(self) -> int:
        """How many clips the site has."""
        with self._tx() as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(_clips).where(_clips.c.site == self.site)
                ).scalar_one()
            )

    def clip_totals(self) -> dict[str, int]:
        """Clips and positions (rows) the site holds, all and of drivers who consented to
        training: ``clips``, ``rows``, ``consented_clips``, ``consented_rows``."""
        c = _clips.c
        consented = c.consent_training.cast(Integer)
        with self._tx() as conn:
            row = conn.execute(
                select(
                    func.count(),
                    func.coalesce(func.sum(c.rows), 0),
                    func.coalesce(func.sum(consented), 0),
                    func.coalesce(func.sum(consented * c.rows), 0),
                ).where(c.site == self.site)
            ).one()
        return dict(
            zip(("clips", "rows", "consented_clips", "consented_rows"), map(int, row), strict=True)
        )

    def dataset_totals(self, profile: str | None = None) -> dict[str, Any]:
        """What a dataset of the consenting drivers' clips holds, in aggregates only: the raw
        clips (``profile`` None) or their outputs under ``profile``. ``clips``, ``vehicles``,
        ``rows``, ``bytes`` (raw: the clips' and their frames'; a profile's outputs are sized
        in the store, None here), ``states`` (outputs by de-identification state),
        ``outputs`` (a profile's outputs, consenting or not) and ``categories``: per label
        category of those clips, ``clips``, distinct ``vehicles`` and ``count`` (the persons
        or plates seen, summed over clips: an upper bound).

        Read from totals every write keeps up to date (the vehicles a write touches are counted
        again, and the totals move by the difference), so this reads a handful of rows however
        large the site; a catalogue written before they were kept has them built on first use.
        """
        dataset = profile or ""
        t = _dataset_sums.c
        with self._tx() as conn:
            if not self._totals_kept(conn):
                self._build_totals(conn)
            rows = conn.execute(
                select(t.category, t.clips, t.vehicles, t.count, t.rows, t.bytes).where(
                    t.site == self.site, t.dataset == dataset
                )
            ).all()
        found = {str(r[0]): tuple(int(v) for v in r[1:]) for r in rows}
        clips, vehicles, _count, positions, size = found.get("", (0, 0, 0, 0, 0))
        return {
            "profile": profile,
            "clips": clips,
            "vehicles": vehicles,
            "rows": positions,
            "bytes": size if profile is None else None,
            "states": {
                name.removeprefix("state:"): v[0]
                for name, v in found.items()
                if name.startswith("state:") and v[0]
            },
            "outputs": None if profile is None else found.get("outputs", (0,))[0],
            "categories": {
                name: {"clips": v[0], "vehicles": v[1], "count": v[2]}
                for name, v in sorted(found.items())
                if name and not name.startswith("state:") and name != "outputs" and v[0]
            },
        }

    def _totals_kept(self, conn: Connection) -> bool:
        key = f"dataset_totals:{self.site}"
        return conn.execute(select(_meta.c.value).where(_meta.c.key == key)).scalar() == "1"

    def _build_totals(self, conn: Connection) -> None:
        """Count every dataset of the site from its rows, once: from then on the writes keep
        the totals."""
        profiles = conn.execute(
            select(_deidentified.c.profile).where(_deidentified.c.site == self.site).distinct()
        ).scalars()
        for dataset in ["", *profiles]:
            self._rebuild_totals(conn, dataset)
        conn.execute(_meta.insert().values(key=f"dataset_totals:{self.site}", value="1"))

    def _rebuild_totals(self, conn: Connection, dataset: str) -> None:
        """Count ``dataset`` again from the site's rows (a profile's outputs were replaced)."""
        dv, t = _dataset_vehicles.c, _dataset_sums.c
        conn.execute(_dataset_vehicles.delete().where(dv.site == self.site, dv.dataset == dataset))
        conn.execute(_dataset_sums.delete().where(t.site == self.site, t.dataset == dataset))
        self._count_vehicles(conn, dataset, None)
        conn.execute(
            _dataset_sums.insert().from_select(
                ["site", "dataset", "category", "clips", "vehicles", "count", "rows", "bytes"],
                select(
                    dv.site,
                    dv.dataset,
                    dv.category,
                    func.sum(dv.clips),
                    func.count(),
                    func.sum(dv.count),
                    func.sum(dv.rows),
                    func.sum(dv.bytes),
                )
                .where(dv.site == self.site, dv.dataset == dataset)
                .group_by(dv.site, dv.dataset, dv.category),
            )
        )
        if dataset:
            outputs = conn.execute(
                select(func.count()).where(
                    _deidentified.c.site == self.site, _deidentified.c.profile == dataset
                )
            ).scalar_one()
            conn.execute(
                _dataset_sums.insert().values(
                    site=self.site,
                    dataset=dataset,
                    category="outputs",
                    clips=int(outputs),
                    vehicles=0,
                    count=0,
                    rows=0,
                    bytes=0,
                )
            )

    def _keep_totals(self, conn: Connection, vins: Iterable[str], datasets: Sequence[str]) -> None:
        """Count ``vins`` again in each of ``datasets`` and move the totals by the difference
        (in the writing transaction)."""
        if not self._totals_kept(conn):
            return  # built on first use, from the rows as they are then
        dv, t = _dataset_vehicles.c, _dataset_sums.c
        touched = sorted(set(vins))
        for dataset in datasets:
            for part in _batches(touched):
                where = [dv.site == self.site, dv.dataset == dataset, dv.vin.in_(part)]
                before = self._vehicle_sums(conn, where)
                conn.execute(_dataset_vehicles.delete().where(*where))
                self._count_vehicles(conn, dataset, part)
                after = self._vehicle_sums(conn, where)
                for category in sorted(set(before) | set(after)):
                    old = before.get(category, (0, 0, 0, 0, 0))
                    new = after.get(category, (0, 0, 0, 0, 0))
                    delta = [b - a for a, b in zip(old, new, strict=True)]
                    if not any(delta):
                        continue
                    key = [t.site == self.site, t.dataset == dataset, t.category == category]
                    names = ("clips", "vehicles", "count", "rows", "bytes")
                    moved = conn.execute(
                        _dataset_sums.update()
                        .where(*key)
                        .values({n: t[n] + d for n, d in zip(names, delta, strict=True)})
                    ).rowcount
                    if not moved:
                        conn.execute(
                            _dataset_sums.insert().values(
                                site=self.site,
                                dataset=dataset,
                                category=category,
                                **dict(zip(names, delta, strict=True)),
                            )
                        )

    @staticmethod
    def _vehicle_sums(conn: Connection, where: Sequence[Any]) -> dict[str, tuple[int, ...]]:
        dv = _dataset_vehicles.c
        rows = conn.execute(
            select(
                dv.category,
                func.sum(dv.clips),
                func.count(),
                func.sum(dv.count),
                func.sum(dv.rows),
                func.sum(dv.bytes),
            )
            .where(*where)
            .group_by(dv.category)
        ).all()
        return {str(r[0]): tuple(int(v or 0) for v in r[1:]) for r in rows}

    def _count_some_vehicles(self, conn: Connection, dataset: str, vins: Sequence[str]) -> None:
        """:meth:`_count_vehicles` for a few vehicles: their clips found by VIN, then their
        labels and outputs by clip id, each an index lookup, summed here."""
        c, lab, d, f = _clips.c, _labels.c, _deidentified.c, _frames.c
        clips = {
            str(clip_id): (str(vin), int(rows), int(size))
            for clip_id, vin, rows, size in conn.execute(
                select(c.clip_id, c.vin, c.rows, c.bytes).where(
                    c.site == self.site, c.consent_training, c.vin.in_(vins)
                )
            ).all()
        }
        sums: dict[tuple[str, str], list[int]] = {}

        def add(category: str, vin: str, count: int = 0, rows: int = 0, size: int = 0) -> None:
            slot = sums.setdefault((category, vin), [0, 0, 0, 0])
            slot[0] += 1
            slot[1] += count
            slot[2] += rows
            slot[3] += size

        counted = dict.fromkeys(clips) if not dataset else {}
        for part in _batches(list(clips)):
            if not dataset:
                frames = dict(
                    conn.execute(
                        select(f.clip_id, f.bytes).where(f.site == self.site, f.clip_id.in_(part))
                    ).all()
                )
                for clip_id in part:
                    vin, rows, size = clips[clip_id]
                    add("", vin, rows=rows, size=size + int(frames.get(clip_id, 0)))
            else:
                for clip_id, state, rows in conn.execute(
                    select(d.clip_id, d.state, d.rows).where(
                        d.site == self.site, d.profile == dataset, d.clip_id.in_(part)
                    )
                ).all():
                    vin = clips[clip_id][0]
                    counted[clip_id] = None
                    add("", vin, rows=int(rows))
                    add(f"state:{state}", vin)
            for clip_id, category, count in conn.execute(
                select(lab.clip_id, lab.category, lab.count).where(
                    lab.site == self.site, lab.clip_id.in_(part)
                )
            ).all():
                if clip_id in counted:
                    add(str(category), clips[clip_id][0], count=int(count))
        if sums:
            conn.execute(
                _dataset_vehicles.insert(),
                [
                    {
                        "site": self.site,
                        "dataset": dataset,
                        "category": category,
                        "vin": vin,
                        "clips": v[0],
                        "count": v[1],
                        "rows": v[2],
                        "bytes": v[3],
                    }
                    for (category, vin), v in sums.items()
                ],
            )

    def _count_vehicles(self, conn: Connection, dataset: str, vins: Sequence[str] | None) -> None:
        """Insert each vehicle's counts in ``dataset`` (of ``vins``, or all), from the rows."""
        if vins is not None:
            self._count_some_vehicles(conn, dataset, vins)
            return
        c, lab, d, f = _clips.c, _labels.c, _deidentified.c, _frames.c
        where = [c.site == self.site, c.consent_training]
        site, name = literal(self.site), literal(dataset)
        on_labels = and_(lab.site == c.site, lab.clip_id == c.clip_id)
        columns = ["site", "dataset", "category", "vin", "clips", "count", "rows", "bytes"]

        def per_label(source: FromClause) -> Select[Any]:
            """Each vehicle's clips of ``source`` with each label, and the counts summed."""
            return (
                select(
                    site,
                    name,
                    lab.category,
                    c.vin,
                    func.count(),
                    func.sum(lab.count),
                    literal(0),
                    literal(0),
                )
                .select_from(source.join(_labels, on_labels))
                .where(*where)
                .group_by(lab.category, c.vin)
            )

        selects: list[Select[Any]] = []
        if not dataset:
            frames = _clips.outerjoin(_frames, and_(f.site == c.site, f.clip_id == c.clip_id))
            selects.append(
                select(
                    site,
                    name,
                    literal(""),
                    c.vin,
                    func.count(),
                    literal(0),
                    func.sum(c.rows),
                    func.sum(c.bytes + func.coalesce(f.bytes, 0)),
                )
                .select_from(frames)
                .where(*where)
                .group_by(c.vin)
            )
            selects.append(per_label(_clips))
        else:
            outputs = _clips.join(
                _deidentified, and_(d.site == c.site, d.clip_id == c.clip_id, d.profile == dataset)
            )
            selects.append(
                select(
                    site,
                    name,
                    literal(""),
                    c.vin,
                    func.count(),
                    literal(0),
                    func.sum(d.rows),
                    literal(0),
                )
                .select_from(outputs)
                .where(*where)
                .group_by(c.vin)
            )
            selects.append(
                select(
                    site,
                    name,
                    literal("state:") + d.state,
                    c.vin,
                    func.count(),
                    literal(0),
                    literal(0),
                    literal(0),
                )
                .select_from(outputs)
                .where(*where)
                .group_by(d.state, c.vin)
            )
            selects.append(per_label(outputs))
        for query in selects:
            conn.execute(_dataset_vehicles.insert().from_select(columns, query))

    def clip_vins(self) -> frozenset[str]:
        """The VINs of the vehicles the site has clips of (one per vehicle, not per clip)."""
        with self._tx() as conn:
            rows = conn.execute(
                select(_clips.c.vin).where(_clips.c.site == self.site).distinct()
            ).scalars()
            return frozenset(rows)

    def clip_pages(
        self, *, by: str = "time", size: int | None = None
    ) -> Iterator[list[ClipRecord]]:
        """Every clip of the site, ``size`` at a time, each page its own short query: oldest
        first (``by="time"``), or by VIN and then oldest first (``by="vin"``: a vehicle's clips
        next to each other). A clip catalogued while the pages are read is listed if it sorts
        after the page being read."""
        c, size = _clips.c, size or _PAGE_ROWS
        keys = {"time": (c.start_time, c.clip_id), "vin": (c.vin, c.start_time, c.clip_id)}[by]
        after: tuple[Any, ...] | None = None
        while True:
            query = select(_clips).where(c.site == self.site)
            if after is not None:
                query = query.where(tuple_(*keys) > tuple_(*after))
            with self._tx() as conn:
                rows = conn.execute(query.order_by(*keys).limit(size)).all()
            if not rows:
                return
            page = [_row_to(ClipRecord, r) for r in rows]
            last = rows[-1]._mapping
            after = tuple(last[k.name] for k in keys)
            yield page
            if len(rows) < size:
                return

    def clip_page(
        self,
        *,
        label: str | None = None,
        consent: bool | None = None,
        vin: str | None = None,
        trigger: str | None = None,
        sort: str = "start",
        descending: bool = False,
        offset: int = 0,
        limit: int = _PAGE_ROWS,
    ) -> tuple[list[ClipRecord], int]:
        """One page of the site's clips that match every filter given, and how many match:
        with a label of category ``label``, of drivers who consented to training or not
        (``consent``), of a VIN starting with ``vin``, recorded on ``trigger``; sorted by
        ``sort`` (one of :data:`CLIP_SORTS`), then by clip id. The database filters, sorts,
        counts and pages: nothing but the page is read."""
        c = _clips.c
        if sort not in CLIP_SORTS:
            raise ValueError(f"sort: {sort!r} is not one of {', '.join(CLIP_SORTS)}")
        where = [c.site == self.site]
        if label is not None:
            labelled = select(_labels.c.clip_id).where(
                _labels.c.site == self.site, _labels.c.category == label
            )
            where.append(c.clip_id.in_(labelled))
        if consent is not None:
            where.append(c.consent_training == consent)
        if vin:
            where.append(c.vin.startswith(vin.upper(), autoescape=True))
        if trigger is not None:
            where.append(c.trigger == trigger)
        column = {
            "start": c.start_time,
            "vin": c.vin,
            "trigger": c.trigger,
            "bytes": c.bytes,
            "rows": c.rows,
        }[sort]
        keys = [column, c.clip_id]
        order = [k.desc() for k in keys] if descending else keys
        with self._tx() as conn:
            total = conn.execute(select(func.count()).select_from(_clips).where(*where))
            count = int(total.scalar_one())
            rows = conn.execute(
                select(_clips).where(*where).order_by(*order).offset(max(0, offset)).limit(limit)
            ).all()
        return [_row_to(ClipRecord, r) for r in rows], count

    def clips_of(self, vins: Sequence[str]) -> list[ClipRecord]:
        """The site's clips of the vehicles with these VINs."""
        return self._rows_in(_clips, ClipRecord, "vin", vins)

    def clip_origins(self) -> dict[str, int]:
        """How many of the site's clips a simulator made and how many vehicles recorded, as
        ``{"simulated": n, "recorded": m}`` (both keys always present)."""
        c = _clips.c
        with self._tx() as conn:
            rows = conn.execute(
                select(c.simulated, func.count()).where(c.site == self.site).group_by(c.simulated)
            ).all()
        counts = {bool(simulated): int(n) for simulated, n in rows}
        return {"simulated": counts.get(True, 0), "recorded": counts.get(False, 0)}

    def files(self, status: str | None = None) -> list[FileRecord]:
        query = select(_files).where(_files.c.site == self.site)
        if status is not None:
            query = query.where(_files.c.status == status)
        with self._tx() as conn:
            rows = conn.execute(query.order_by(_files.c.recorded_at)).all()
        return [_row_to(FileRecord, r) for r in rows]

    def clip_hashes(self, clip_ids: Sequence[str]) -> dict[str, str]:
        """The content hash of each of ``clip_ids`` that is already catalogued."""
        found: dict[str, str] = {}
        with self._tx() as conn:
            for part in _batches(sorted(set(clip_ids))):
                rows = conn.execute(
                    select(_clips.c.clip_id, _clips.c.sha256).where(
                        _clips.c.site == self.site, _clips.c.clip_id.in_(part)
                    )
                ).all()
                found.update({r.clip_id: r.sha256 for r in rows})
        return found

    def stored_paths(self, paths: Sequence[str]) -> set[str]:
        """Those of ``paths`` that a catalogued clip or frames object is stored at."""
        found: set[str] = set()
        with self._tx() as conn:
            for table in (_clips, _frames):
                for part in _batches(sorted(set(paths))):
                    found.update(
                        conn.execute(
                            select(table.c.path).where(
                                table.c.site == self.site, table.c.path.in_(part)
                            )
                        ).scalars()
                    )
        return found

    def ingested_files(self) -> set[str]:
        """Content hashes of every file already ingested (quarantined ones may be retried),
        or erased or expired: a file whose data was erased, or whose storage period ended, is
        never ingested again."""
        return self._file_hashes("ingested", "erased", "expired")

    def erased_files(self) -> set[str]:
        """Content hashes of the files whose data was erased on a driver's request."""
        return self._file_hashes("erased")

    def _file_hashes(self, *statuses: str) -> set[str]:
        with self._tx() as conn:
            rows = conn.execute(
                select(_files.c.sha256).where(
                    _files.c.site == self.site, _files.c.status.in_(statuses)
                )
            ).scalars()
            return set(rows)

    def register(
        self, file: FileRecord, clips: Sequence[ClipRecord], frames: Sequence[FramesRecord] = ()
    ) -> list[str]:
        """Record one ingested file with its clips; see :meth:`register_many`."""
        return self.register_many([(file, clips)], frames)

    def register_many(
        self,
        batch: Sequence[tuple[FileRecord, Sequence[ClipRecord]]],
        frames: Sequence[FramesRecord] = (),
    ) -> list[str]:
        """Record ingested files, their clips, the clips' camera frames and their vehicles, all
        in one transaction.

        A clip already catalogued with the same content is left as it is. Returns the ids of
        the clips that were new. Raises :class:`ClipConflict` (and records nothing) when a
        clip id is already catalogued, or appears earlier in the batch, with other content.
        """
        if not batch:
            return []
        for attempt in range(_RETRIES):
            try:
                return self._register(batch, frames)
            except IntegrityError as exc:
                # Another writer inserted the same vehicle, clip or file between our read and
                # our insert: read again and retry; what it wrote is now known.
                if attempt == _RETRIES - 1:
                    raise CatalogueError(
                        f"catalogue {self.url}: concurrent writers kept colliding: {exc.orig}",
                        hint="run one ingest per site at a time, then rerun this one",
                    ) from exc
        raise AssertionError("unreachable")

    def _register(
        self,
        batch: Sequence[tuple[FileRecord, Sequence[ClipRecord]]],
        frames: Sequence[FramesRecord],
    ) -> list[str]:
        now = datetime.now(UTC)
        clip_ids = [c.clip_id for _, clips in batch for c in clips]
        known = self.clip_hashes(clip_ids)
        new_clips: list[dict[str, Any]] = []
        for _, clips in batch:
            for clip in clips:
                existing = known.get(clip.clip_id)
                if existing is None:
                    known[clip.clip_id] = clip.sha256
                    new_clips.append({**_fields(clip), "ingested_at": now, "site": self.site})
                elif existing != clip.sha256:
                    raise ClipConflict(
                        f"clip {clip.clip_id} is already stored with different content "
                        f"(sha256 {existing[:12]}..., this file has {clip.sha256[:12]}...)",
                        hint="a vehicle must not reuse a clip id; give the upload a new id",
                    )
        new_ids = {c["clip_id"] for c in new_clips}
        new_frames = {
            f.clip_id: {**_fields(f), "site": self.site} for f in frames if f.clip_id in new_ids
        }
        with self._tx() as conn:
            if new_clips:
                self._add_vehicles(conn, new_clips)
                conn.execute(_clips.insert(), new_clips)
            if new_frames:
                conn.execute(_frames.insert(), list(new_frames.values()))
            if new_clips:
                # After the frames: a clip's bytes count its frames.
                self._keep_totals(conn, {c["vin"] for c in new_clips}, [""])
            self._put_files(conn, [file for file, _ in batch], now)
        return [c["clip_id"] for c in new_clips]

    def frames(self, clip_ids: Sequence[str] | None = None) -> list[FramesRecord]:
        """The frames records of the site's clips (of ``clip_ids`` only, when given)."""
        if clip_ids is not None:
            return self._rows_in(_frames, FramesRecord, "clip_id", clip_ids)
        with self._tx() as conn:
            rows = conn.execute(
                select(_frames).where(_frames.c.site == self.site).order_by(_frames.c.clip_id)
            )
            return [_row_to(FramesRecord, row) for row in rows]

    def record_quarantine(self, file: FileRecord) -> None:
        """Record that a file was quarantined, with its reason."""
        with self._tx() as conn:
            self._put_files(conn, [file], datetime.now(UTC))

    def _put_files(self, conn: Connection, files: Sequence[FileRecord], now: datetime) -> None:
        """Insert or replace file rows (a file quarantined once may be ingested later)."""
        rows = {f.sha256: {**_fields(f), "recorded_at": now, "site": self.site} for f in files}
        for part in _batches(rows):
            conn.execute(
                _files.delete().where(_files.c.site == self.site, _files.c.sha256.in_(part))
            )
        conn.execute(_files.insert(), list(rows.values()))

    def _add_vehicles(self, conn: Connection, clips: list[dict[str, Any]]) -> None:
        """Insert the vehicles not yet known; a vehicle's model is what its first clip says."""
        models = {c["vin"]: c["vehicle_model"] for c in reversed(clips)}
        known: set[str] = set()
        for part in _batches(sorted(models)):
            known.update(
                conn.execute(
                    select(_vehicles.c.vin).where(
                        _vehicles.c.site == self.site, _vehicles.c.vin.in_(part)
                    )
                ).scalars()
            )
        rows = [
            {"site": self.site, "vin": vin, "vehicle_model": model}
            for vin, model in sorted(models.items())
            if vin not in known
        ]
        if rows:
            conn.execute(_vehicles.insert(), rows)

    def replace_labels(self, clip_ids: Iterable[str], labels: Iterable[LabelRecord]) -> None:
        """Set the labels of ``clip_ids`` to ``labels`` (their earlier labels go), atomically.
        Both are taken a batch at a time in that one transaction, so a stage's labels need not
        all be rows in memory at once."""
        now = datetime.now(UTC)
        with self._tx() as conn:
            touched: set[str] = set()
            for part in _batches(clip_ids):
                touched.update(
                    conn.execute(
                        select(_clips.c.vin).where(
                            _clips.c.site == self.site, _clips.c.clip_id.in_(part)
                        )
                    ).scalars()
                )
                conn.execute(
                    _labels.delete().where(_labels.c.site == self.site, _labels.c.clip_id.in_(part))
                )
            for batch in _batches(labels, _INSERT_ROWS):
                conn.execute(
                    _labels.insert(),
                    [{**_fields(r), "site": self.site, "classified_at": now} for r in batch],
                )
            profiles = conn.execute(
                select(_deidentified.c.profile).where(_deidentified.c.site == self.site).distinct()
            ).scalars()
            self._keep_totals(conn, touched, ["", *profiles])

    def labels(self) -> list[LabelRecord]:
        """Every label of the site's clips."""
        with self._tx() as conn:
            rows = conn.execute(
                select(_labels)
                .where(_labels.c.site == self.site)
                .order_by(_labels.c.clip_id, _labels.c.category)
            ).all()
        return [_row_to(LabelRecord, r) for r in rows]

    def replace_deidentified(self, profile: str, records: Iterable[DeidentifiedRecord]) -> None:
        """Make ``records`` the site's de-identified outputs under ``profile``, atomically;
        they are inserted a batch at a time in that one transaction."""
        now = datetime.now(UTC)
        d = _deidentified.c
        mine = and_(d.site == self.site, d.profile == profile)
        with self._tx() as conn:
            # An output made again with the same bytes keeps when it was first stored: its
            # storage period runs from then. Outputs whose raw clip's own period ended (the
            # clip is gone, so no rerun makes them again) stay until theirs ends.
            stored = {
                (str(clip_id), str(digest)): created
                for clip_id, digest, created in conn.execute(
                    select(d.clip_id, d.sha256, d.created_at).where(mine)
                ).all()
            }
            conn.execute(
                _deidentified.delete().where(
                    mine,
                    d.clip_id.in_(select(_clips.c.clip_id).where(_clips.c.site == self.site)),
                )
            )
            for batch in _batches(records, _INSERT_ROWS):
                conn.execute(
                    _deidentified.insert(),
                    [
                        {
                            **_fields(r),
                            "site": self.site,
                            "created_at": stored.get((r.clip_id, r.sha256), now),
                        }
                        for r in batch
                    ],
                )
            if self._totals_kept(conn):
                self._rebuild_totals(conn, profile)

    def deidentified(self, profile: str | None = None) -> list[DeidentifiedRecord]:
        """De-identified outputs of the site, of one profile or all."""
        query = select(_deidentified).where(_deidentified.c.site == self.site)
        if profile is not None:
            query = query.where(_deidentified.c.profile == profile)
        with self._tx() as conn:
            rows = conn.execute(query.order_by(_deidentified.c.clip_id)).all()
        return [_row_to(DeidentifiedRecord, r) for r in rows]

    def deidentified_of(self, clip_ids: Sequence[str]) -> list[DeidentifiedRecord]:
        """The de-identified outputs, under every profile, of these clips."""
        return self._rows_in(_deidentified, DeidentifiedRecord, "clip_id", clip_ids)

    def outputs_without_clip(self, profile: str) -> list[DeidentifiedRecord]:
        """The outputs under ``profile`` whose raw clip is gone (its storage period ended)."""
        d = _deidentified.c
        held = select(_clips.c.clip_id).where(_clips.c.site == self.site)
        with self._tx() as conn:
            rows = conn.execute(
                select(_deidentified).where(
                    d.site == self.site, d.profile == profile, d.clip_id.not_in(held)
                )
            ).all()
        return [_row_to(DeidentifiedRecord, r) for r in rows]

    def outputs_of_vehicle(self, vin: str) -> list[DeidentifiedRecord]:
        """The de-identified outputs of the vehicle ``vin``, under every profile, whether or
        not its raw clips are still held."""
        return self._rows_in(_deidentified, DeidentifiedRecord, "vin", [vin])

    def _rows_in(self, table: Table, cls: type[_R], column: str, values: Sequence[str]) -> list[_R]:
        """The site's rows of ``table`` whose ``column`` is one of ``values``, as ``cls``
        records (an indexed lookup, a batch of values at a time)."""
        out: list[_R] = []
        with self._tx() as conn:
            for part in _batches(sorted(set(values))):
                rows = conn.execute(
                    select(table).where(table.c.site == self.site, table.c[column].in_(part))
                ).all()
                out.extend(_row_to(cls, r) for r in rows)
        return out

    def clips_stored_before(self, cutoff: datetime) -> list[ClipRecord]:
        """The clips ingested before ``cutoff`` (a storage period's start), oldest first."""
        c = _clips.c
        return self._stored_before(_clips, ClipRecord, c.ingested_at < cutoff, c.ingested_at)

    def outputs_stored_before(self, cutoff: datetime) -> list[DeidentifiedRecord]:
        """The de-identified outputs first stored before ``cutoff``, under every profile."""
        d = _deidentified.c
        return self._stored_before(
            _deidentified, DeidentifiedRecord, d.created_at < cutoff, d.profile
        )

    def _stored_before(self, table: Table, cls: type[_R], older: Any, first: Any) -> list[_R]:
        """The site's rows of ``table`` that ``older`` selects, by ``first`` then clip id."""
        with self._tx() as conn:
            rows = conn.execute(
                select(table)
                .where(table.c.site == self.site, older)
                .order_by(first, table.c.clip_id)
            ).all()
        return [_row_to(cls, r) for r in rows]

    def labels_of(self, clip_ids: Sequence[str]) -> list[LabelRecord]:
        """The labels of these clips."""
        return self._rows_in(_labels, LabelRecord, "clip_id", clip_ids)

    def forget_clips(
        self,
        conn: Connection,
        clip_ids: Sequence[str],
        *,
        keep_outputs: bool = False,
        status: str = "erased",
    ) -> None:
        """Delete every row of these clips, in the caller's transaction: the clips, their
        frames, labels and (unless ``keep_outputs``: a raw storage period ended, the
        de-identified one not) their de-identified outputs under every profile, their
        vehicles once no clip of theirs is left, and the kept totals by the difference. The
        files they came from are marked ``status`` (their upload path dropped), so that the
        same upload is never ingested again."""
        c, f, lab, d = _clips.c, _frames.c, _labels.c, _deidentified.c
        ids = sorted(set(clip_ids))
        vins: set[str] = set()
        sources: set[str] = set()
        for part in _batches(ids):
            for vin, source in conn.execute(
                select(c.vin, c.source_sha256).where(c.site == self.site, c.clip_id.in_(part))
            ).all():
                vins.add(str(vin))
                sources.add(str(source))
        profiles = list(
            conn.execute(select(d.profile).where(d.site == self.site).distinct()).scalars()
        )
        outputs = [] if keep_outputs else [(_deidentified, d)]
        tables = [(_frames, f), (_labels, lab), *outputs, (_clips, c)]
        for part in _batches(ids):
            for table, column in tables:
                conn.execute(
                    table.delete().where(column.site == self.site, column.clip_id.in_(part))
                )
        for part in _batches(sorted(vins)):
            left = set(
                conn.execute(
                    select(c.vin).where(c.site == self.site, c.vin.in_(part)).distinct()
                ).scalars()
            )
            gone = [v for v in part if v not in left]
            if gone:
                conn.execute(
                    _vehicles.delete().where(
                        _vehicles.c.site == self.site, _vehicles.c.vin.in_(gone)
                    )
                )
        for part in _batches(sorted(sources)):
            still = set(
                conn.execute(
                    select(c.source_sha256)
                    .where(c.site == self.site, c.source_sha256.in_(part))
                    .distinct()
                ).scalars()
            )
            done = [digest for digest in part if digest not in still]
            if done:
                conn.execute(
                    _files.update()
                    .where(_files.c.site == self.site, _files.c.sha256.in_(done))
                    .values(status=status, path="", reason=status)
                )
        self._keep_totals(conn, vins, ["", *profiles])

    def files_with_status(self, conn: Connection, digests: Iterable[str], status: str) -> list[str]:
        """Of the files with these content hashes, those with ``status`` (in the caller's
        transaction, which sees its own writes)."""
        found: list[str] = []
        for part in _batches(sorted(set(digests))):
            found += conn.execute(
                select(_files.c.sha256).where(
                    _files.c.site == self.site, _files.c.sha256.in_(part), _files.c.status == status
                )
            ).scalars()
        return found

    def forget_outputs(self, conn: Connection, outputs: Sequence[DeidentifiedRecord]) -> None:
        """Delete these de-identified outputs' rows (a retention run), in the caller's
        transaction, and move the kept totals by the difference."""
        d = _deidentified.c
        by_profile: dict[str, list[str]] = {}
        for output in outputs:
            by_profile.setdefault(output.profile, []).append(output.clip_id)
        vins: set[str] = set()
        for profile, ids in by_profile.items():
            for part in _batches(sorted(set(ids))):
                vins.update(
                    conn.execute(
                        select(_clips.c.vin).where(
                            _clips.c.site == self.site, _clips.c.clip_id.in_(part)
                        )
                    ).scalars()
                )
                conn.execute(
                    _deidentified.delete().where(
                        d.site == self.site, d.profile == profile, d.clip_id.in_(part)
                    )
                )
        self._keep_totals(conn, vins, sorted(by_profile))

    def scrub(self) -> bool:
        """Leave what deletes removed unreadable in the database's files: SQLite (which
        zeroes deleted content, ``secure_delete``) copies its write-ahead log back and
        truncates it; PostgreSQL vacuums the tables that hold fleet data. Returns False when
        SQLite's log could not be emptied (a reader held it; the next scrub empties it)."""
        if self._engine.dialect.name == "sqlite":
            for attempt in range(_RETRIES):
                with self._engine.connect() as conn:
                    busy = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").first()
                if busy is None or not busy[0]:
                    return True
                time.sleep(0.05 * 2**attempt)
            return False
        if self._engine.dialect.name == "postgresql":
            names = (
                "clips",
                "frames",
                "labels",
                "deidentified",
                "files",
                "vehicles",
                "dataset_vehicles",
                "consent_withdrawals",
                "received_objects",
            )
            with self._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                present = set(inspect(conn).get_table_names())
                for name in names:
                    if name in present:
                        conn.exec_driver_sql(f"VACUUM {name}")
        return True

    # -- consent withdrawals -----------------------------------------------------------------

    def withdraw_consent(self, conn: Connection, vin: str, purpose: str, seq: int) -> bool:
        """Record that the driver of ``vin`` withdrew consent for ``purpose`` (the ledger
        entry ``seq`` vouches for it), in the caller's transaction. False when it was
        withdrawn before."""
        w = _withdrawals.c
        found = conn.execute(
            select(w.purpose).where(w.site == self.site, w.vin == vin, w.purpose == purpose)
        ).first()
        if found is not None:
            return False
        conn.execute(
            _withdrawals.insert().values(
                site=self.site,
                vin=vin,
                purpose=purpose,
                withdrawn_at=datetime.now(UTC),
                ledger_seq=seq,
            )
        )
        return True

    def drop_withdrawals(self, conn: Connection, vin: str) -> None:
        """Forget the withdrawals of ``vin`` (its erasure: nothing of the vehicle is kept, its
        VIN included; the ledger keeps, by keyed hash, that both happened)."""
        w = _withdrawals.c
        conn.execute(_withdrawals.delete().where(w.site == self.site, w.vin == vin))

    def withdrawals(self, vin: str | None = None) -> list[dict[str, Any]]:
        """Consent withdrawals on file (of one vehicle, when given): vin, purpose, when."""
        w = _withdrawals.c
        query = select(w.vin, w.purpose, w.withdrawn_at, w.ledger_seq).where(w.site == self.site)
        if vin is not None:
            query = query.where(w.vin == vin)
        with self._tx() as conn:
            rows = conn.execute(query.order_by(w.withdrawn_at, w.vin, w.purpose)).all()
        return [
            {
                "vin": r.vin,
                "purpose": r.purpose,
                "withdrawn_at": _utc(r.withdrawn_at).isoformat(timespec="seconds"),
                "ledger_seq": int(r.ledger_seq),
            }
            for r in rows
        ]

    def withdrawn_vins(self, purpose: str) -> frozenset[str]:
        """The vehicles whose drivers withdrew consent covering ``purpose`` (see
        :func:`withdrawal_covers`)."""
        w = _withdrawals.c
        with self._tx() as conn:
            rows = conn.execute(select(w.vin, w.purpose).where(w.site == self.site)).all()
        return frozenset(
            str(vin) for vin, withdrawn in rows if withdrawal_covers(withdrawn, purpose)
        )

    def inventory(self) -> dict[str, Any]:
        """Counts and ranges of what the site holds: clips, vehicles, rows, bytes, time range,
        consent shares, triggers and models, and how many files were quarantined."""
        c = _clips.c
        where = c.site == self.site
        with self._tx() as conn:
            totals = conn.execute(
                select(
                    func.count(),
                    func.coalesce(func.sum(c.rows), 0),
                    func.coalesce(func.sum(c.objects), 0),
                    func.coalesce(func.sum(c.bytes), 0),
                    func.min(c.start_time),
                    func.max(c.end_time),
                    func.coalesce(func.sum(c.consent_training.cast(Integer)), 0),
                ).where(where)
            ).one()
            vehicles = conn.execute(
                select(func.count()).select_from(_vehicles).where(_vehicles.c.site == self.site)
            ).scalar_one()
            consenting_vehicles = conn.execute(
                select(func.count(func.distinct(c.vin))).where(where, c.consent_training)
            ).scalar_one()
            triggers: dict[str, int] = dict(
                conn.execute(select(c.trigger, func.count()).where(where).group_by(c.trigger)).all()
            )
            models: dict[str, int] = dict(
                conn.execute(
                    select(c.vehicle_model, func.count(func.distinct(c.vin)))
                    .where(where)
                    .group_by(c.vehicle_model)
                ).all()
            )
            files: dict[str, int] = dict(
                conn.execute(
                    select(_files.c.status, func.count())
                    .where(_files.c.site == self.site)
                    .group_by(_files.c.status)
                ).all()
            )
            labels: dict[str, int] = dict(
                conn.execute(
                    select(_labels.c.category, func.count())
                    .where(_labels.c.site == self.site)
                    .group_by(_labels.c.category)
                ).all()
            )
            with_frames, frames, frame_bytes = conn.execute(
                select(
                    func.count(),
                    func.coalesce(func.sum(_frames.c.frames), 0),
                    func.coalesce(func.sum(_frames.c.bytes), 0),
                ).where(_frames.c.site == self.site)
            ).one()
            deidentified = conn.execute(
                select(_deidentified.c.profile, _deidentified.c.state, func.count())
                .where(_deidentified.c.site == self.site)
                .group_by(_deidentified.c.profile, _deidentified.c.state)
            ).all()
        clips, rows, objects, size, start, end, consenting = totals
        return {
            "site": self.site,
            "clips": int(clips),
            "vehicles": int(vehicles),
            "rows": int(rows),
            "objects": int(objects),
            "bytes": int(size),
            "time_range": {
                "start": None if start is None else _utc(start).isoformat(),
                "end": None if end is None else _utc(end).isoformat(),
            },
            "consent": {
                "training_share_of_clips": round(consenting / clips, 4) if clips else None,
                "training_share_of_vehicles": (
                    round(consenting_vehicles / vehicles, 4) if vehicles else None
                ),
            },
            "triggers": {k: int(v) for k, v in sorted(triggers.items())},
            "vehicle_models": {k: int(v) for k, v in sorted(models.items())},
            "files": {
                "ingested": int(files.get("ingested", 0)),
                "quarantined": int(files.get("quarantined", 0)),
            },
            "frames": {
                "clips": int(with_frames),
                "frames": int(frames),
                "bytes": int(frame_bytes),
            },
            "labels": {k: int(v) for k, v in sorted(labels.items())},
            "deidentified": _by_profile(deidentified),
        }
