"""``release create``: package a finished federated run as one signed bundle, as a decision the
coordinator's ledger records.

A run is released only when everything about it holds, checked in this order (default deny):
it is a federated run (a local run's weights stay at each site; the centralised counterfactual
pooled data no law let move, and never has a coordinator's record); the coordinator's ledger
verifies and records the run finished; the global model in the coordinator's store is the one
that record names; the lineage the record lists is the run's, is not empty, and every link of it
holds in its site's ledger where that can be reached (:mod:`onshore.release.lineage`); the
weights are the declared model's. The first check that fails refuses the release and is written
to the ledger as ``release_refused``; a release is written as ``release_created`` with the
bundle's hashes and every check it passed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn

from onshore.errors import InvalidWeights, NotReleasable, ReleaseExists
from onshore.files import write_atomically
from onshore.forecast.runs import RUNS_DIR, RunFolder
from onshore.ledger import Entry, Ledger, verify
from onshore.release.bundle import Signer, build_bundle, read_bundle
from onshore.release.card import build_card
from onshore.release.lineage import check_lineage, parse_links
from onshore.release.records import (
    RELEASE_CREATED,
    RELEASE_REFUSED,
    bundle_path,
    check_version,
    coordinator_ledger,
)
from onshore.rulebook.loader import project_rulebooks
from onshore.settings import Project
from onshore.sites.keystore import load_keystore
from onshore.store.objects import ObjectStore, sha256

__all__ = ["create_release"]

RUN_FINISHED = "federated_run_finished"


def _finished(ledger: Ledger, run: str) -> Entry | None:
    """The coordinator's last record of ``run`` finishing, if it has one."""
    found = None
    for entry in ledger.entries(kind=RUN_FINISHED):
        if entry.data.get("run") == run:
            found = entry
    return found


def create_release(
    project: Project, run: str, version: str, *, say: Callable[[str], None] = lambda _m: None
) -> dict[str, Any]:
    """Release the federated run ``run`` as ``version``: write its signed bundle under
    ``releases/<version>/`` and record the decision in the coordinator's ledger. Returns what
    ``onshore release create --json`` prints (``bundle`` is the bundle's path).

    Raises :class:`ReleaseExists` for a version already released, :class:`NotReleasable`
    naming the check a run fails (recorded as ``release_refused``), :class:`KeystoreError`
    without the coordinator's keys.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_tensors

    from onshore.forecast.nets import ModelSpec, build_model, check_weights

    check_version(version)
    target = bundle_path(project, version)
    if target.exists():
        raise ReleaseExists(
            f"release {version} already exists: {target}",
            hint="versions are never overwritten; choose a new --version",
        )
    coord = project.settings.coordinator
    keys = load_keystore(project.keystore_path(coord))
    passed: list[str] = []
    with coordinator_ledger(project, keys) as ledger:

        def refuse(check: str, reason: str, hint: str) -> NoReturn:
            ledger.append(
                RELEASE_REFUSED,
                {"version": version, "run": run, "check": check, "reason": reason},
            )
            raise NotReleasable(f"run {run} cannot be released as {version}: {reason}", hint=hint)

        if any(e.data.get("version") == version for e in ledger.entries(kind=RELEASE_CREATED)):
            raise ReleaseExists(
                f"the coordinator's ledger already records release {version}",
                hint="versions are never reused, even when a bundle was deleted; choose another",
            )
        folder = RunFolder.of(project, run)
        summary = folder.read("federated.json")
        if summary is None:
            if folder.file("run.json").exists():
                refuse(
                    "federated",
                    f"run {run} is a local run: each site's model stayed in its own store",
                    "release a federated run: onshore train --mode federated",
                )
            refuse(
                "federated",
                f"no finished federated run {run} in {project.root / RUNS_DIR}",
                "give the --run of a finished 'onshore train --mode federated'; a centralised "
                "counterfactual is never releasable",
            )
        if summary.get("mode") != "federated":
            refuse(
                "federated",
                f"run {run} is a {summary.get('mode')} run, not a federated one",
                "only a federated run can be released",
            )
        passed.append(f"run {run} is a federated run")
        report = verify(ledger, check_hashes=False)
        if not report.ok:
            refuse(
                "coordinator_ledger",
                f"the coordinator's ledger does not verify: {report.problems[0].reason}",
                "nothing is released from a ledger that was altered; restore the coordinator's "
                "catalogue from a backup and find out what changed it",
            )
        finished = _finished(ledger, run)
        if finished is None:
            refuse(
                "finished",
                f"the coordinator's ledger has no record of run {run} finishing",
                "a run is released only once the coordinator has recorded its result",
            )
        record = finished.data
        passed.append(f"the coordinator's ledger verifies and records run {run} finished")
        objects = ObjectStore(project.store_url(coord))
        weights = objects.read(str(record.get("global_path")))
        digest = sha256(weights)
        if digest != record.get("global_sha256") or digest != summary["model_path"]["sha256"]:
            refuse(
                "weights",
                f"the global model in the store ({digest[:16]}...) is not the one the ledger "
                f"recorded ({str(record.get('global_sha256'))[:16]}...)",
                f"restore {record.get('global_path')} in the coordinator's store",
            )
        passed.append(f"the global model is the one the ledger recorded ({digest[:16]}...)")
        try:
            links = parse_links(record.get("lineage"), f"{RUN_FINISHED} lineage")
        except ValueError as exc:
            refuse("lineage", str(exc), "the coordinator's record of the run is damaged")
        if links != summary.get("lineage"):
            refuse(
                "lineage",
                f"runs/{run}/federated.json and the coordinator's ledger list other updates",
                "the ledger is the record; restore federated.json from it",
            )
        if not links:
            refuse(
                "lineage",
                "no update of any site went into the model",
                "train until some site's updates are accepted",
            )
        spec = ModelSpec(summary["model"]["name"], summary["model"].get("config") or {})
        try:
            tensors = load_tensors(weights)
            check_weights(spec, tensors)
        except (InvalidWeights, SafetensorError) as exc:
            refuse("weights", f"the weights are not the declared model's: {exc}", "retrain")
        passed.append(f"the weights are exactly a {spec.name} model's tensors")
        say(f"checking the lineage: {len(links)} updates in the sites' ledgers")
        lineage = check_lineage(project, run, links)
        if not lineage.ok:
            refuse(
                "lineage",
                lineage.problems[0],
                f"{len(lineage.problems)} problem(s); run 'onshore ledger verify' at the sites",
            )
        passed.append(
            f"{lineage.checked} of {lineage.links} updates hold in their sites' ledgers"
            + (f" ({', '.join(lineage.unreachable)} not reachable)" if lineage.unreachable else "")
        )
        trained = list(dict.fromkeys(str(link["site"]) for link in links))
        created = datetime.now(UTC).isoformat(timespec="seconds")
        model = build_model(spec)
        books = project_rulebooks(project)
        card = build_card(
            project,
            version=version,
            created=created,
            summary=summary,
            lineage=lineage,
            trained_sites=trained,
            rulebook_versions={key: book.version for key, book in books.items()},
            parameters=sum(t.numel() for t in model.state_dict().values()),
            sizes=model.sizes,
        )
        lineage_doc = {
            "run": run,
            "coordinator": {"site": coord.id, "seq": finished.seq, "hash": finished.hash},
            "updates": links,
        }
        signer = Signer.of(keys, coord)
        data = build_bundle(
            version=version,
            run=run,
            created=created,
            project={"name": project.settings.name, "root": str(project.root)},
            signer=signer,
            keys=keys,
            weights=weights,
            card=card,
            lineage=lineage_doc,
        )
        bundle = read_bundle(data)
        decision = {"allowed": True, "checks": passed, "notes": list(lineage.notes)}
        # The bundle is written first and taken back if the ledger refuses the entry, so a
        # bundle on disk is a recorded release (verify says so when a crash left one that is
        # not).
        write_atomically(target, data)
        try:
            entry = ledger.append(
                RELEASE_CREATED,
                {
                    "version": version,
                    "run": run,
                    "bundle": str(target.relative_to(project.root)),
                    "bundle_sha256": hashlib.sha256(data).hexdigest(),
                    "manifest_sha256": bundle.manifest_sha256,
                    "files": bundle.manifest["files"],
                    "signer": signer.key,
                    "run_finished": {"seq": finished.seq, "hash": finished.hash},
                    "decision": decision,
                },
            )
        except BaseException:
            target.unlink(missing_ok=True)
            raise
    say(f"released {run} as {version}: {target}")
    return {
        "bundle": str(target),
        "version": version,
        "run": run,
        "manifest_sha256": bundle.manifest_sha256,
        "bundle_sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "signer": signer.as_dict(),
        "ledger": {"site": coord.id, "seq": entry.seq, "hash": entry.hash},
        "decision": decision,
        "lineage": lineage.as_dict(),
        "sites": card["sites"],
        "parties": card["parties"],
        "regions": card["regions"],
        "privacy": card["privacy"],
    }
