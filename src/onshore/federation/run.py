"""Running federated training on one machine: Flower's Simulation Engine, one SuperNode per
site, each a Ray worker with one CPU, the ServerApp in a child process of the caller.

The child is started fresh (``spawn``) for every run and ends with it, so Ray's state never
outlives a run in the caller's process, and a Ray crash ends the run with a clear error
instead of taking the caller with it. What the run says reaches the caller's ``say`` as it
happens."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import warnings
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from typing import Any, Final

from onshore.errors import TrainingError
from onshore.federation.apps import Mod, make_client_app, make_server_app
from onshore.federation.options import FederatedOptions
from onshore.forecast.runs import RunFolder
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
    folder = RunFolder.of(project, options.run)
    folder.start(options.settings())
    done = folder.read("federated.json")
    if done is not None:
        say(f"run {options.run} finished earlier; its summary is read back")
        return options, dict(done)
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

    ``client_mods`` go outside every site's outbound mod (fault drills); they must pickle, as
    they go to the run's processes. ``workers``: Ray workers (default: one per site, at most
    the CPUs).
    """
    options, done = prepare_run(project, options, say)
    if done is not None:
        return done
    folder = RunFolder.of(project, options.run)
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
    if options.dp:
        _say_privacy_plan(project, options, say)
    failure = _in_child(pickle.dumps((options, tuple(client_mods), backend)), say)
    if failure is not None:
        raise TrainingError(
            f"federated run {options.run} failed: {failure}",
            hint="the rounds done so far are in the coordinator's ledger and "
            f"{folder.file('rounds.json')}; rerun the same command to resume after the last round",
        )
    summary = folder.read("federated.json")
    if summary is None:
        raise TrainingError(
            f"federated run {options.run} ended without a result",
            hint=f"see {folder.file('rounds.json')} and the coordinator's ledger",
        )
    return dict(summary)


_POLL_S: Final = 0.5


def _in_child(payload: bytes, say: Callable[[str], None]) -> str | None:
    """Run :func:`_simulate` on ``payload`` in a fresh child process, passing what it says to
    ``say``. Returns None when the run ended, else why it failed."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_simulate, args=(payload, send), name="onshore-federation")
    child.start()
    send.close()
    failure: str | None = "the simulation process ended without a word"
    try:
        while True:
            if receive.poll(_POLL_S):
                try:
                    kind, text = receive.recv()
                except EOFError:
                    break
                if kind == "say":
                    say(text)
                else:
                    failure = text if kind == "failed" else None
                    break
            elif not child.is_alive():
                break
        child.join()
    finally:
        if child.is_alive():  # the caller was interrupted: the run stops with it
            child.terminate()
            child.join()
        receive.close()
    if failure == "the simulation process ended without a word" and child.exitcode:
        code = child.exitcode
        failure = f"the simulation process died ({_exit_reason(code)})"
    return failure


def _exit_reason(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
        return f"signal {-code}"
    return f"exit status {code}"


def _simulate(payload: bytes, send: Connection) -> None:
    """The child's side: Flower's Simulation Engine with the ServerApp here and one Ray worker
    per site."""
    from flwr.simulation import run_simulation

    options, client_mods, backend = pickle.loads(payload)

    def say(message: str) -> None:
        send.send(("say", message))

    try:
        with flower_environment():
            run_simulation(
                server_app=make_server_app(options, say=say),
                client_app=make_client_app(options, outer_mods=client_mods),
                num_supernodes=len(options.sites),
                backend_config=backend,
            )
    except BaseException as exc:  # the caller gets every failure, in words
        send.send(("failed", f"{type(exc).__name__}: {exc}"))
    else:
        send.send(("done", ""))
    finally:
        send.close()


def _say_privacy_plan(
    project: Project, options: FederatedOptions, say: Callable[[str], None]
) -> None:
    """Before a run with DP: what it will take each site's privacy spent to, beside its
    budget (a site refuses a run that would use the budget up, unless ``spend_budget``)."""
    from onshore.federation.site import load_accountant, planned_epsilon, site_dp
    from onshore.forecast.dataset import build_site_dataset
    from onshore.store import SiteStore

    for site_id in options.sites:
        site = project.site(site_id)
        dp = site_dp(site)
        steps = options.site_steps(site.compute.relative_throughput)
        with SiteStore.open(project, site_id) as store:
            samples = len(build_site_dataset(store, options.dataset).train)
            accountant = load_accountant(store)
        if not samples:
            continue
        planned = planned_epsilon(accountant, dp, options, steps, samples, 1)
        verdict = (
            "within its budget"
            if planned < dp.target_epsilon
            else "its whole budget: "
            + ("spent, as --spend-budget asks" if options.spend_budget else "it will refuse")
        )
        say(
            f"{site_id}: this run takes its privacy spent from epsilon "
            f"{accountant.epsilon(dp.delta):.2f} to {planned:.2f} of {dp.target_epsilon:g} "
            f"({options.rounds} rounds x {steps} steps on {samples:,} samples): {verdict}"
        )
