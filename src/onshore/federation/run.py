"""Running federated training on one machine: Flower's Simulation Engine, one SuperNode per
site, each a Ray worker with one CPU, the ServerApp in this process."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson

from onshore.errors import ConfigError, TrainingError
from onshore.federation.apps import Mod, make_client_app, make_server_app
from onshore.federation.options import FederatedOptions
from onshore.model.local import RUNS_DIR, _read_json, _write_atomically
from onshore.parties.identity import site_facts
from onshore.settings import Project
from onshore.sites.compute import RAY_ENVIRONMENT, local_ray_auth, ray_temp_dir

__all__ = ["flower_environment", "prepare_run", "run_federated"]


@contextlib.contextmanager
def flower_environment() -> Iterator[None]:
    """What Flower and Ray need here: no run-time installation of the app's dependencies (it
    would fetch a CUDA build of torch), Ray's files in a short private folder, a token on
    every call to Ray (:func:`~onshore.sites.compute.local_ray_auth`), quiet logs."""
    wanted = {
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "RAY_TMPDIR": str(ray_temp_dir()),
        **RAY_ENVIRONMENT,
        **local_ray_auth(),
        "FLWR_TELEMETRY_ENABLED": "0",
        "TOKENIZERS_PARALLELISM": "false",
    }
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            yield
    finally:
        flwr_logger.setLevel(level)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def prepare_run(
    project: Project, options: FederatedOptions, say: Callable[[str], None]
) -> tuple[FederatedOptions, dict[str, Any] | None]:
    """Check ``options`` against the project and against an earlier start of the same run,
    and record them in the run's folder. Returns the options with the coordinator's project
    folder in them, and the summary of the run if it finished earlier (then there is nothing
    to do). Raises :class:`ConfigError` for an unknown site or a run id already used with other
    options."""
    for site in options.sites:
        site_facts(project, site)
    options = FederatedOptions.from_dict(
        {**options.as_dict(), "project": str(project.root.resolve())}
    )
    folder = project.root / RUNS_DIR / options.run
    earlier = _read_json(folder / "options.json")
    if earlier is not None and earlier != orjson.loads(orjson.dumps(options.settings())):
        raise ConfigError(
            f"run {options.run} was started with other options",
            hint="give a new --run id, or the options of that run",
        )
    done = _read_json(folder / "federated.json")
    if done is not None:
        say(f"run {options.run} finished earlier; its summary is read back")
        return options, dict(done)
    _write_atomically(
        folder / "options.json", orjson.dumps(options.settings(), option=orjson.OPT_INDENT_2)
    )
    return options, None


def run_federated(
    project: Project,
    options: FederatedOptions,
    *,
    say: Callable[[str], None] = lambda _m: None,
    client_mods: Sequence[Mod] = (),
    workers: int | None = None,
) -> dict[str, Any]:
    """Train ``options.model`` across ``options.sites`` with Flower's Simulation Engine and
    return the run's summary (what ``onshore train --mode federated --json`` prints).

    ``client_mods`` go outside every site's outbound mod (fault drills). ``workers``: Ray
    workers (default: one per site, at most the CPUs).
    """
    from flwr.simulation import run_simulation

    options, done = prepare_run(project, options, say)
    if done is not None:
        return done
    folder = project.root / RUNS_DIR / options.run
    cpus = os.cpu_count() or 1
    n = len(options.sites)
    backend: dict[str, Any] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": max(1, min(workers or n, cpus)),
            "num_gpus": 0,
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.ERROR,
        },
    }
    say(
        f"federated run {options.run}: {n} sites, {options.rounds} rounds of "
        f"{options.strategy}, {options.model.name}"
        + (", DP-SGD at every site" if options.dp else ", without DP")
    )
    with flower_environment():
        try:
            run_simulation(
                server_app=make_server_app(options, say=say),
                client_app=make_client_app(options, outer_mods=client_mods),
                num_supernodes=n,
                backend_config=backend,
            )
        except Exception as exc:
            raise TrainingError(
                f"federated run {options.run} failed: {exc}",
                hint="the rounds done so far are in the coordinator's ledger and "
                f"{folder / 'rounds.json'}",
            ) from exc
    summary = _read_json(folder / "federated.json")
    if summary is None:
        raise TrainingError(
            f"federated run {options.run} ended without a result",
            hint=f"see {folder / 'rounds.json'} and the coordinator's ledger",
        )
    return dict(summary)
