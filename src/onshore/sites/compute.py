"""The engine that runs a site's batch stages: in the command's own process, or on Ray Data.

A stage (ingest, classify, de-identify, training samples) is written once, as a *worker*: a
callable built once per worker process from the stage's settings (the store to read and write,
the profile, the zones), called with a batch of work items and returning one result per item.
The stage's driver hands its items to :meth:`Engine.map`, consumes the results as they come, and
alone writes the catalogue. Workers only write content-addressed objects to the store, which a
rerun finds there and adopts, so a stage that dies halfway leaves nothing visible and a rerun
reaches the same catalogue.

Which engine runs the workers is the site's compute setting (``[sites.X.compute] workers``), not
the stage's:

- ``workers = 1`` (the default) and no ``RAY_ADDRESS``: the command's own process;
- ``workers = N`` > 1: a local Ray instance of N CPUs (``ray.init(num_cpus=N)``), the items
  streamed through ``Dataset.map_batches`` on a pool of N actors (one detector session each);
- ``RAY_ADDRESS`` set: the same Dataset on that Ray cluster, on N actors.

Actors ask for a little less than a CPU each, so that Ray Data's own tasks always find room: a
Dataset whose actors hold every CPU waits for ever. A worker process that dies is restarted
and its batch retried a few times (its writes are idempotent); past that the stage fails with
:class:`~onshore.errors.ComputeError` and nothing it did is in the catalogue.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pickle
import secrets
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Generic, TypeVar

import pyarrow as pa

from onshore.errors import ComputeError, ConfigError, OnshoreError
from onshore.files import write_atomically
from onshore.settings import ComputeProfile

__all__ = [
    "ACTOR_CPUS",
    "RAY_ENVIRONMENT",
    "RAY_WINDOW",
    "Engine",
    "Spill",
    "local_ray_auth",
    "ray_temp_dir",
]

_log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

Worker = Callable[[list[T]], list[R]]
"""A stage's work: one result per item of the batch, in order."""

ACTOR_CPUS: Final = 0.9
"""CPUs each Ray actor reserves: less than one, so that a pool of N actors on N CPUs leaves Ray
Data's tasks room to run (a Dataset whose actors hold every CPU hangs)."""
RAY_WINDOW: Final = 20_000
"""Items one Ray Dataset of :meth:`Engine.map` takes: a stage over more runs one Dataset per
window (a fresh actor pool each, a few seconds), so its driver holds at most a window."""
_RETRIES: Final = 3
"""Times a lost worker process is restarted, and its batch retried, before the stage fails."""
_OBJECT_STORE_BYTES: Final = 512 * 2**20
"""Ray's shared-memory object store on a local instance: items and results are small records
(the objects themselves go to the site's store), so a modest store keeps memory flat."""


RAY_ENVIRONMENT: Final = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_enable_metrics_collection": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "RAY_DEDUP_LOGS": "0",
}
"""What every Ray onshore starts runs with: no usage reports or metrics, no warning about
accelerators it does not use, every log line kept (the Flower simulation's Ray too)."""
_STAGE_ENVIRONMENT: Final = {
    **RAY_ENVIRONMENT,
    # Ray's C++ core logs a warning per actor pool at error level (restarts allowed with
    # constructor arguments in its object store); real failures still raise.
    "RAY_BACKEND_LOG_LEVEL": "fatal",
}


class Spill(Generic[T]):
    """Records a stage's driver keeps until its one catalogue transaction, in a temporary
    file rather than in memory (a site's worth of labels or outputs would grow with the site):
    appended in order, read back once in that order. A context manager; the file, unlinked
    from the start, goes when it is closed (or the process ends)."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="onshore-spill-")  # noqa: SIM115 (closed by close())
        self._buffer: list[T] = []
        self.count = 0

    def add(self, record: T) -> None:
        self._buffer.append(record)
        self.count += 1
        if len(self._buffer) >= _SPILL_RECORDS:
            self._flush()

    def extend(self, records: Iterable[T]) -> None:
        for record in records:
            self.add(record)

    def _flush(self) -> None:
        if self._buffer:
            pickle.dump(self._buffer, self._file, protocol=pickle.HIGHEST_PROTOCOL)
            self._buffer = []

    def __iter__(self) -> Iterator[T]:
        self._flush()
        self._file.seek(0)
        while True:
            try:
                records: list[T] = pickle.load(self._file)
            except EOFError:
                return
            yield from records

    def __enter__(self) -> Spill[T]:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._buffer = []
        self._file.close()


_SPILL_RECORDS: Final = 2000


def local_ray_auth() -> dict[str, str]:
    """The environment that makes a local Ray demand a token on every call: Ray's servers
    listen on every interface of the machine, and without a token anyone who reaches their
    ports could run code as the site. A random token, one per process (Ray keeps the first it
    reads for the life of the process); none of this when the environment already says how Ray
    authenticates (``RAY_AUTH_MODE``).

    Ray reads its authentication mode once, when it is first imported: set this before then.
    In a process that imported Ray without it, the answer is empty (a token there would lock
    the process out of its own Ray), and the Ray it starts takes no token."""
    if os.environ.get("RAY_AUTH_MODE"):
        return {}
    if "ray" in sys.modules:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled

        if not is_token_auth_enabled():
            _log.warning("Ray was imported before onshore started it: it takes no token")
            return {}
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": _process_token()}


@functools.cache
def _process_token() -> str:
    return secrets.token_hex(32)


def ray_temp_dir() -> Path:
    """A short, private folder for Ray's sockets and logs (Unix socket paths are limited to
    about 100 bytes, which a deep temporary folder exceeds)."""
    folder = Path(tempfile.gettempdir()) / f"onshore-ray-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


@dataclass
class Engine:
    """Runs a stage's workers as the site's compute settings say; a context manager that
    starts Ray on first use (when it is needed) and stops what it started."""

    workers: int = 1
    address: str | None = None
    """A Ray cluster to run on (``RAY_ADDRESS``); None for a local one or none at all."""
    ray: bool = False
    """Run on Ray even with one worker (to compare one Ray worker with more)."""
    _started: bool = False
    _environment: dict[str, str | None] = field(default_factory=dict, repr=False)
    """What starting a local Ray changed in this process's environment, to put back."""

    @classmethod
    def for_site(cls, compute: ComputeProfile, workers: int | None = None) -> Engine:
        """The engine of a site with ``compute`` (``workers``, when given, instead of its
        setting); ``RAY_ADDRESS`` in the environment sends its stages to that cluster."""
        if workers is not None and workers < 1:
            raise ConfigError(f"--workers {workers}: at least 1")
        return cls(workers or compute.workers, os.environ.get("RAY_ADDRESS") or None)

    @property
    def uses_ray(self) -> bool:
        return self.ray or self.address is not None or self.workers > 1

    def describe(self) -> dict[str, Any]:
        """What runs the stages, for ``--json`` output and progress lines."""
        if not self.uses_ray:
            return {"engine": "inline", "workers": 1}
        where = "cluster" if self.address is not None else "local"
        return {"engine": "ray", "ray": where, "workers": self.workers}

    def label(self) -> str:
        """A suffix for progress lines: empty in this process, else where the work runs."""
        if not self.uses_ray:
            return ""
        where = f"Ray cluster {self.address}" if self.address is not None else "Ray"
        return f" ({where}, {self.workers} workers)"

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the Ray instance this engine started (a cluster is only disconnected from)."""
        if self._started:
            import ray

            self._started = False
            ray.shutdown()
            self._restore_environment()

    def _restore_environment(self) -> None:
        for key, value in self._environment.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._environment = {}

    def map(
        self,
        make: Callable[..., Worker[T, R]],
        args: tuple[Any, ...],
        items: Iterable[T],
        *,
        batch_size: int,
    ) -> Iterator[R]:
        """The results of ``make(*args)`` over ``items``, in batches of ``batch_size``, in the
        items' order. ``make`` and ``args`` must pickle (they travel to Ray's workers); each
        worker process builds one worker and keeps it for every batch it gets.

        ``items`` are taken as the work needs them: a batch at a time in this process, a window
        of :data:`RAY_WINDOW` at a time on Ray, so that a stage over a whole site never holds
        all of its items (or their results) at once."""
        pending = iter(items)
        if not self.uses_ray:
            work: Worker[T, R] | None = None
            while batch := list(islice(pending, batch_size)):
                work = work or make(*args)
                yield from work(batch)
            return
        while window := list(islice(pending, RAY_WINDOW)):
            yield from self._map_ray(make, args, window, batch_size)

    def _map_ray(
        self,
        make: Callable[..., Worker[T, R]],
        args: tuple[Any, ...],
        items: Sequence[T],
        batch_size: int,
    ) -> Iterator[R]:
        _quiet_ray_data()
        self._start()
        import ray
        import ray.data

        with warnings.catch_warnings():
            # Ray Data's own defaults set an option it deprecates (use_push_based_shuffle).
            warnings.simplefilter("ignore", DeprecationWarning)
            context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.execution_options.preserve_order = True
        context.print_on_execution_start = False
        payload = pickle.dumps((make, args))
        rows = [{"item": pickle.dumps(item)} for item in items]
        blocks = max(1, min(len(rows), -(-len(rows) // batch_size)))
        dataset = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            _RayBatch,
            fn_constructor_args=(payload,),
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=min(self.workers, blocks)),
            num_cpus=ACTOR_CPUS,
            max_restarts=_RETRIES,
            max_task_retries=_RETRIES,
        )
        del rows
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                assert isinstance(batch, pa.Table)
                for data in batch.column("result").to_pylist():
                    result = pickle.loads(data)
                    if isinstance(result, _Failed):
                        raise result.error
                    yield result
        except OnshoreError:
            raise
        except Exception as exc:
            raise _unwrap(exc) from exc

    def start(self) -> None:
        """Start (or connect to) Ray now rather than at the first :meth:`map`; nothing to do
        in this process's own engine."""
        if self.uses_ray:
            self._start()

    def _start(self) -> None:
        if self.address is None and not _ray_running():
            auth = local_ray_auth()  # before Ray is first imported: see local_ray_auth
            self._environment = {key: os.environ.get(key) for key in auth}
            os.environ.update(auth)
        import ray

        if ray.is_initialized():
            self._restore_environment()
            return
        # Ray's failures reach the caller as exceptions; its logs would repeat them, with
        # tracebacks from other processes, on the user's terminal.
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        for key, value in _STAGE_ENVIRONMENT.items():
            os.environ.setdefault(key, value)
        try:
            with _stderr_silenced():
                self._init(ray)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            self._restore_environment()
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
            raise ComputeError(
                f"cannot start {where}: {exc}",
                hint="check RAY_ADDRESS and that the cluster is up"
                if self.address
                else "set [compute] workers = 1 to run in this process",
            ) from exc
        self._started = True

    def _init(self, ray: Any) -> None:
        if self.address is not None:
            ray.init(
                address=self.address,
                log_to_driver=False,
                configure_logging=False,
                namespace="onshore",
            )
            return
        os.environ.setdefault("RAY_TMPDIR", str(ray_temp_dir()))
        ray.init(
            num_cpus=self.workers,
            include_dashboard=False,
            object_store_memory=_OBJECT_STORE_BYTES,
            log_to_driver=False,
            configure_logging=False,
            namespace="onshore",
        )


_RAY_DATA_LOGGING: Final = """\
# Ray Data's log, for onshore: to the Ray session's ray-data.log only. The command says what
# went wrong itself; Ray Data's console lines would land in its --json output's terminal.
version: 1
disable_existing_loggers: false
formatters:
  ray: {format: "%(asctime)s %(levelname)s %(filename)s:%(lineno)s -- %(message)s"}
handlers:
  file:
    class: ray.data._internal.logging.SessionFileHandler
    formatter: ray
    filename: ray-data.log
loggers:
  ray.data: {level: INFO, handlers: [file], propagate: false}
"""


def _ray_running() -> bool:
    """Whether this process is connected to a Ray already (one that another engine started)."""
    ray = sys.modules.get("ray")
    return ray is not None and bool(ray.is_initialized())


def _quiet_ray_data() -> None:
    """Point Ray Data's logging (``RAY_DATA_LOGGING_CONFIG``) at a configuration that logs to
    its file only, unless the user chose one; before ``ray.data`` is imported."""
    if "RAY_DATA_LOGGING_CONFIG" in os.environ:
        return
    path = ray_temp_dir() / "ray-data-logging.yaml"
    if not path.exists() or path.read_text() != _RAY_DATA_LOGGING:
        write_atomically(path, _RAY_DATA_LOGGING.encode())
    os.environ["RAY_DATA_LOGGING_CONFIG"] = str(path)


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Send this process's standard error to /dev/null while Ray starts: its C++ core prints
    a line about its log level there, which the ``--json`` output of a command should not carry
    (whatever goes wrong is raised as an exception all the same)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _RayBatch:
    """One Ray actor's worker: built once from the pickled ``(make, args)``, then called with
    batches of pickled items."""

    def __init__(self, payload: bytes) -> None:
        # One CPU's worth of threads: N actors on N CPUs must not each use every core.
        pa.set_cpu_count(1)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        make, args = pickle.loads(payload)
        self._work = make(*args)

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = [pickle.loads(item) for item in batch.column("item").to_pylist()]
        try:
            results = self._work(items)
        except OnshoreError as exc:
            # Handed to the driver as it is (Ray would wrap it in its own exceptions, with a
            # traceback from another process in the message).
            return pa.table({"result": [pickle.dumps(_Failed(exc))]})
        return pa.table({"result": pa.array([pickle.dumps(r) for r in results], pa.binary())})


@dataclass(frozen=True, slots=True)
class _Failed:
    """A worker's onshore error, travelling as a result."""

    error: OnshoreError


def _unwrap(exc: BaseException) -> ComputeError:
    """What Ray raised, as a :class:`ComputeError` that says what Ray said (a worker's own
    onshore errors reach the driver as results, see :class:`_Failed`)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return ComputeError(
        f"a batch stage failed on Ray: {lines[-1] if lines else type(exc).__name__}",
        hint="nothing it did is in the catalogue; rerun it",
    )
