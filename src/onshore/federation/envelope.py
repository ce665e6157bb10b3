"""What a site sends the coordinator, and the checks both ends apply to it.

A reply holds the model's tensors (``arrays``, training only), scalar metrics (``metrics``) and,
added by the site's outbound mod once its gate allowed the reply, the site's signed statement
(``onshore``): run, round, kind, the digest and size of the content, and the site's ledger entry
that recorded it leaving. The coordinator checks the same things again, and the signature: a
site's software can be broken, and a message can come from someone who is not a site.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from onshore.forecast.nets import ModelSpec, weight_signature
from onshore.sites.keystore import SiteKeys

__all__ = [
    "ARRAYS",
    "ENVELOPE",
    "MAX_METRICS",
    "METRICS",
    "Statement",
    "UpdateRefused",
    "arrays_digest",
    "check_content",
    "content_digest",
    "open_envelope",
    "seal",
    "size_limit",
]

ARRAYS: Final = "arrays"
METRICS: Final = "metrics"
ENVELOPE: Final = "onshore"
MAX_METRICS: Final = 64
"""Scalar metrics a reply may carry: a model's errors overall and per kind of motion, beside
constant velocity's, the privacy spent and the site's data funnel need about fifty."""
_DOMAIN: Final = b"onshore.federated-update.v1\0"
_METRIC_BYTES: Final = 64 * MAX_METRICS


class UpdateRefused(Exception):
    """A reply that must not leave the site, or that the coordinator will not use.

    ``reason`` is one of ``wrong_content``, ``wrong_shape``, ``not_finite``, ``oversized``,
    ``not_scalar``, ``unsigned``, ``unknown_site``, ``replay``, ``altered``; ``detail`` says
    what was found."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _dtype_name(dtype: object) -> str:
    return str(dtype).removeprefix("torch.")


def size_limit(spec: ModelSpec) -> int:
    """The most bytes a reply may carry for ``spec``: its tensors as serialised, with room for
    the arrays' headers and the scalar metrics."""
    signature = weight_signature(spec)
    data = sum(
        math.prod(shape) * np.dtype(_dtype_name(dtype)).itemsize
        for shape, dtype in signature.values()
    )
    return data + 256 * len(signature) + _METRIC_BYTES


def arrays_digest(arrays: ArrayRecord) -> str:
    """SHA-256 of a model's tensors by name: which global model a run started from, or a site
    fine-tuned."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(arrays[name].numpy().tobytes())
    return h.hexdigest()


def content_digest(content: RecordDict) -> tuple[str, int]:
    """SHA-256 of a reply's tensors (name, dtype, shape, values) and metrics, and the bytes
    they take on the wire."""
    h = hashlib.sha256()
    size = 0
    if ARRAYS in content.array_records:
        arrays = content.array_records[ARRAYS]
        for name in sorted(arrays):
            array = arrays[name]
            h.update(orjson.dumps([name, array.dtype, list(array.shape)]))
            h.update(array.numpy().tobytes())
            size += len(array.data)
    if METRICS in content.metric_records:
        metrics = orjson.dumps(dict(content.metric_records[METRICS]), option=orjson.OPT_SORT_KEYS)
        h.update(metrics)
        size += len(metrics)
    return h.hexdigest(), size


def check_content(content: RecordDict, spec: ModelSpec, *, with_arrays: bool) -> tuple[str, int]:
    """Check that ``content`` holds only ``spec``'s tensors (when ``with_arrays``), finite,
    and scalar finite metrics, within :func:`size_limit`. Returns the digest and size; raises
    :class:`UpdateRefused` naming the first problem."""
    expected = {ARRAYS, METRICS} if with_arrays else {METRICS}
    records = {*content.array_records, *content.metric_records, *content.config_records}
    extra = sorted(records - expected - {ENVELOPE})
    if extra or METRICS not in content.metric_records:
        raise UpdateRefused(
            "wrong_content",
            f"a reply holds {sorted(expected)} only; found {sorted(records)}",
        )
    if with_arrays and ARRAYS not in content.array_records:
        raise UpdateRefused("wrong_content", "a training reply holds the model's arrays")
    if content.config_records.keys() - {ENVELOPE} or (
        ENVELOPE in content.array_records or ENVELOPE in content.metric_records
    ):
        raise UpdateRefused("wrong_content", "unexpected records besides arrays and metrics")
    digest, size = content_digest(content)
    limit = size_limit(spec)
    if size > limit:
        raise UpdateRefused(
            "oversized", f"{size} bytes, more than the {limit} the declared model needs"
        )
    metrics = content.metric_records[METRICS]
    if len(metrics) > MAX_METRICS:
        raise UpdateRefused("oversized", f"{len(metrics)} metrics, at most {MAX_METRICS}")
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UpdateRefused("not_scalar", f"metric {name!r} is not a number")
        if not math.isfinite(value):
            raise UpdateRefused("not_finite", f"metric {name!r} is {value}")
    if with_arrays:
        _check_arrays(content.array_records[ARRAYS], spec)
    return digest, size


def _check_arrays(arrays: ArrayRecord, spec: ModelSpec) -> None:
    signature = weight_signature(spec)
    missing, extra = sorted(set(signature) - set(arrays)), sorted(set(arrays) - set(signature))
    if missing or extra:
        raise UpdateRefused(
            "wrong_shape",
            f"tensors do not match the declared {spec.name}: missing {missing or 'none'}, "
            f"unexpected {extra or 'none'}",
        )
    for name, (shape, dtype) in signature.items():
        array = arrays[name]
        if tuple(array.shape) != shape or array.dtype != _dtype_name(dtype):
            raise UpdateRefused(
                "wrong_shape",
                f"{name} is {tuple(array.shape)} {array.dtype}, the declared {spec.name} has "
                f"{shape} {_dtype_name(dtype)}",
            )
        if not np.isfinite(array.numpy()).all():
            raise UpdateRefused("not_finite", f"{name} holds NaN or infinity")


@dataclass(frozen=True, slots=True)
class Statement:
    """What a site signs about a reply it lets go."""

    run: str
    round: int
    kind: str
    """``train`` or ``evaluate``."""
    site: str
    sha256: str
    size: int
    """Bytes of the content on the wire."""
    ledger: Mapping[str, Any]
    """The site's ledger entry that recorded the reply leaving: ``site``, ``seq``, ``hash``."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "round": self.round,
            "kind": self.kind,
            "site": self.site,
            "sha256": self.sha256,
            "bytes": self.size,
            "ledger": dict(self.ledger),
        }

    def canonical(self) -> bytes:
        return orjson.dumps(self.as_dict(), option=orjson.OPT_SORT_KEYS)


def seal(content: RecordDict, statement: Statement, keys: SiteKeys) -> None:
    """Add the site's signed ``statement`` to ``content``."""
    text = statement.canonical()
    content[ENVELOPE] = ConfigRecord(
        {"statement": text.decode(), "signature": keys.sign(_DOMAIN + text)}
    )


def open_envelope(content: RecordDict, public_keys: Mapping[str, Ed25519PublicKey]) -> Statement:
    """The statement in ``content``, once its signature verifies under the key of the site it
    names. Raises :class:`UpdateRefused` (``unsigned``, ``unknown_site``)."""
    envelope = content.config_records.get(ENVELOPE)
    if envelope is None:
        raise UpdateRefused("unsigned", "the reply carries no site's signed statement")
    text, signature = envelope.get("statement"), envelope.get("signature")
    if not isinstance(text, str) or not isinstance(signature, bytes):
        raise UpdateRefused("unsigned", "the statement or its signature is malformed")
    try:
        data = orjson.loads(text)
        statement = Statement(
            run=str(data["run"]),
            round=int(data["round"]),
            kind=str(data["kind"]),
            site=str(data["site"]),
            sha256=str(data["sha256"]),
            size=int(data["bytes"]),
            ledger=dict(data["ledger"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UpdateRefused("unsigned", f"the statement is malformed: {exc}") from exc
    key = public_keys.get(statement.site)
    if key is None:
        raise UpdateRefused("unknown_site", f"{statement.site!r} is not a site of this federation")
    try:
        key.verify(signature, _DOMAIN + text.encode())
    except InvalidSignature:
        raise UpdateRefused(
            "unknown_site", f"the signature is not {statement.site}'s: its key did not sign it"
        ) from None
    return statement


def metric_values(content: RecordDict) -> dict[str, float]:
    """The reply's metrics as floats (empty when it has none)."""
    metrics = content.metric_records.get(METRICS)
    return {} if metrics is None else {k: float(v) for k, v in metrics.items()}  # type: ignore[arg-type]


def statement_of(content: RecordDict) -> Statement | None:
    """The statement in ``content`` without checking its signature (for the site's own
    records and tests)."""
    envelope = content.config_records.get(ENVELOPE)
    if envelope is None or not isinstance(envelope.get("statement"), str):
        return None
    data = orjson.loads(str(envelope["statement"]))
    size = data.pop("bytes")
    return Statement(**{**data, "size": size, "ledger": dict(data["ledger"])})


def public_key(pem: bytes) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def metrics_record(values: Mapping[str, int | float]) -> MetricRecord:
    return MetricRecord(dict(values))
