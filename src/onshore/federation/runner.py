"""What a party's Flower processes run: onshore's own apps, for runs its coordinator signed.

Anyone who can reach a SuperLink can submit a run with ``flwr run``, and Flower would then load
that run's app, code included, at every SuperNode and at the SuperLink. A site must run only
onshore's apps, and only for runs its coordinator started. So the programs Flower starts for a
task, ``flwr-clientapp`` at a site and ``flwr-serverapp`` at the coordinator, are onshore's
(:func:`write_programs` puts them first on the SuperNode's and SuperLink's ``PATH``). Each runs
Flower's own task loop, but loads the app itself:

- the app (the FAB Flower unpacked) must be onshore's: nothing in it but ``pyproject.toml``
  (and Flower's ``.info`` listing), naming onshore's installed apps as its components; a FAB
  carrying code of its own, or naming other components, is refused;
- the run's options must carry the coordinator's signature (:func:`sign_options`), checked
  against the coordinator's ledger key: its identity on file at a site, its own key at the
  coordinator;
- the app then run is onshore's, imported from the installed package, never from the FAB.

A refused run gets an error reply and a ``federated_run_refused`` entry in the party's ledger
saying why.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import stat
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from onshore.errors import ConfigError, OnshoreError
from onshore.federation.options import RUN_CONFIG_KEY, SIGNATURE_KEY
from onshore.files import write_atomically
from onshore.sites.keystore import SiteKeys

__all__ = [
    "COMPONENTS",
    "OPTIONS_CONTEXT",
    "REFUSED_KIND",
    "app_problem",
    "clientapp_main",
    "options_problem",
    "serverapp_main",
    "sign_options",
    "write_programs",
]

OPTIONS_CONTEXT: Final = b"onshore.federation.options.v1\x00"
"""Prefix of what the coordinator's signature over a run's options covers."""
COMPONENTS: Final = {
    "serverapp": "onshore.federation.apps:server_app",
    "clientapp": "onshore.federation.apps:client_app",
}
"""The only components an onshore app names."""
REFUSED_KIND: Final = "federated_run_refused"
_ALLOWED_FILES: Final = {"pyproject.toml", ".info/CONTENT"}


def _message(options_json: str) -> bytes:
    return OPTIONS_CONTEXT + hashlib.sha256(options_json.encode()).digest()


def sign_options(options_json: str, keys: SiteKeys) -> str:
    """The coordinator's signature (hex) over a run's options as they travel (JSON text)."""
    return keys.sign(_message(options_json)).hex()


def options_problem(config: Mapping[str, Any], key: Ed25519PublicKey | None) -> str | None:
    """Why a run config's options are not signed by the coordinator's ``key``; None if they
    are."""
    text, signature = config.get(RUN_CONFIG_KEY), config.get(SIGNATURE_KEY)
    if not isinstance(text, str) or not text:
        return f"the run carries no onshore options ({RUN_CONFIG_KEY}): not an onshore run"
    if key is None:
        return "the coordinator's key is not on file here"
    if not isinstance(signature, str) or not signature:
        return "the run's options are not signed: not started by the coordinator"
    try:
        key.verify(bytes.fromhex(signature), _message(text))
    except (ValueError, InvalidSignature):
        return "the run's options are not signed by the coordinator on file: a stranger's run"
    return None


def app_problem(app_dir: Path) -> str | None:
    """Why the app Flower unpacked in ``app_dir`` is not onshore's; None if it is."""
    if not app_dir.is_dir():
        return f"the app was not unpacked ({app_dir} is missing)"
    files = {
        str(p.relative_to(app_dir)) for p in app_dir.rglob("*") if p.is_file() or p.is_symlink()
    }
    extra = sorted(files - _ALLOWED_FILES)
    if extra:
        return (
            f"the app carries files of its own ({', '.join(extra[:5])}): onshore runs only its "
            "installed apps"
        )
    try:
        config = tomllib.loads((app_dir / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        return f"the app's pyproject.toml cannot be read: {exc}"
    components = ((config.get("tool") or {}).get("flwr") or {}).get("app", {}).get("components")
    if components != COMPONENTS:
        return f"the app names components {components}, not onshore's"
    return None


# -- the site's ClientApp process ----------------------------------------------------------------


class _Refusing:
    """Stands in for a ClientApp that must not run: records why and replies with an error."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __call__(self, message: Any, context: Any) -> Any:
        from flwr.app import Error, Message

        _record_refusal(context.node_config, context.run_id, self.reason)
        return Message(Error(code=4006, reason=f"refused: {self.reason}"), reply_to=message)


class _Guarded:
    """onshore's installed ClientApp, run only for a run the coordinator signed."""

    def __call__(self, message: Any, context: Any) -> Any:
        from flwr.app import Error, Message

        from onshore.federation.apps import client_app

        key = _coordinator_key(context.node_config)
        problem = options_problem(context.run_config, key)
        if problem is not None:
            _record_refusal(context.node_config, context.run_id, problem)
            return Message(Error(code=4006, reason=f"refused: {problem}"), reply_to=message)
        return client_app(message=message, context=context)


def _project_of(node_config: Mapping[str, Any]) -> Any:
    from onshore.settings import load_project

    folder = node_config.get("project")
    if not isinstance(folder, str):
        raise ConfigError("the SuperNode's node config names no project")
    return load_project(Path(folder))


def _coordinator_key(node_config: Mapping[str, Any]) -> Ed25519PublicKey | None:
    from onshore.parties.identity import load_peers

    try:
        found = load_peers(_project_of(node_config)).coordinator
    except OnshoreError:
        return None
    return None if found is None else found.key


def _record_refusal(node_config: Mapping[str, Any], run_id: object, reason: str) -> None:
    from onshore.parties.own import own_ledger

    try:
        with own_ledger(_project_of(node_config)) as (ledger, _keys):
            ledger.append(REFUSED_KIND, {"flower_run": str(run_id), "reason": reason})
    except OnshoreError as exc:
        print(f"onshore: could not record the refusal: {exc}", file=sys.stderr)
    print(f"onshore: refused a run: {reason}", file=sys.stderr)


def _load_client_app_fn(*_args: Any, **_kwargs: Any) -> Any:
    from flwr.common.config import get_project_dir

    def load(fab_id: str, fab_version: str, fab_hash: str) -> Any:
        problem = app_problem(Path(get_project_dir(fab_id, fab_version, fab_hash)))
        return _Guarded() if problem is None else _Refusing(problem)

    return load


def _end_with_parent(parent: int, grace: float = 5.0) -> None:
    """End this task once the Flower process that started it is gone: first as Ctrl-C would
    (Flower's exit handlers run), and outright ``grace`` seconds later if it is still here
    (a task still connecting to its Flower process does not answer Ctrl-C). Flower's
    SuperExec starts ``flwr-serverapp`` without its ``--parent-pid``, so a coordinator stopped
    outright would otherwise leave its ServerApp running. ``parent``: the PID the program
    saw as its parent when it started, before its imports (seconds on a busy machine)."""
    import signal
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        signal.raise_signal(signal.SIGINT)
        time.sleep(grace)
        os._exit(1)

    threading.Thread(target=watch, name="onshore-end-with-parent", daemon=True).start()


def clientapp_main(parent: int | None = None) -> None:
    """``flwr-clientapp`` at a site: Flower's task loop, with onshore loading the app; it ends
    when ``parent`` (the SuperNode that started it; default: this process's parent) is gone."""
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    _end_with_parent(os.getppid() if parent is None else parent)
    # The module, not the function of the same name its package exports.
    runtime = importlib.import_module("flwr.supernode.runtime.run_clientapp")
    runtime.get_load_client_app_fn = _load_client_app_fn  # type: ignore[attr-defined]
    flwr_clientapp()


# -- the coordinator's ServerApp process ---------------------------------------------------------


def _run_server_app(
    grid: Any, context: Any, server_app_dir: str, server_app_attr: str | None = None, **_: Any
) -> Any:
    from onshore.federation.apps import server_app
    from onshore.parties.own import own_ledger
    from onshore.settings import load_project

    problem = app_problem(Path(server_app_dir))
    folder = os.environ.get("ONSHORE_PROJECT")
    project = load_project(Path(folder)) if folder else None
    key = None
    if project is not None:
        from onshore.parties.identity import LocalParty

        key = LocalParty.of(project).keys().public_key
    problem = problem or options_problem(context.run_config, key)
    if problem is not None:
        if project is not None:
            with own_ledger(project) as (ledger, _keys):
                ledger.append(REFUSED_KIND, {"flower_run": str(context.run_id), "reason": problem})
        raise ConfigError(f"onshore refused the run: {problem}")
    server_app(grid=grid, context=context)
    return context


def serverapp_main(parent: int | None = None) -> None:
    """``flwr-serverapp`` at the coordinator: Flower's loop, with onshore's ServerApp only; it
    ends when ``parent`` (the SuperExec that started it; default: this process's parent) is
    gone."""
    from flwr.superlink.cli.flwr_serverapp import flwr_serverapp

    _end_with_parent(os.getppid() if parent is None else parent)
    # The module, not the function of the same name its package exports.
    runtime = importlib.import_module("flwr.superlink.runtime.run_serverapp")
    runtime.run_ = _run_server_app  # type: ignore[attr-defined]
    flwr_serverapp()


def write_programs(folder: Path, role: str) -> Path:
    """Write the program Flower starts for a task (``flwr-clientapp`` for a site,
    ``flwr-serverapp`` for the coordinator) into ``folder``; put ``folder`` first on the
    Flower process's ``PATH``. Returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    name, entry = {
        "site": ("flwr-clientapp", "clientapp_main"),
        "coordinator": ("flwr-serverapp", "serverapp_main"),
    }[role]
    path = folder / name
    text = (
        f"#!{sys.executable}\n"
        "# Written by onshore: Flower runs onshore's own apps here, for signed runs only.\n"
        "# The parent is read first: onshore's imports take seconds, and the task is to end\n"
        "# with the Flower process that started it.\n"
        "import os\n\n"
        "parent = os.getppid()\n"
        f"from onshore.federation.runner import {entry}  # noqa: E402\n\n"
        f"{entry}(parent)\n"
    )
    write_atomically(
        path,
        text.encode(),
        mode=stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH,
    )
    return folder
