"""Downloads of bought datasets through expiring signed links, in standard formats.

``sign_link(session, org, entitlement, fmt)`` checks the buyer holds an active entitlement with
``download`` and returns a token: an HMAC-signed (``itsdangerous``, keyed by the install's
``market-downloads`` server secret) payload binding the organisation, the entitlement and the
format, valid for ``LINK_TTL`` seconds. ``open_link(db, org, token)`` verifies it -- a tampered
token or one for another organisation is ``Forbidden`` (403), an expired one ``LinkExpired``
(410) -- checks the entitlement again through ``entitlements.require`` (metered and logged),
and renders the dataset: ``openai`` (chat JSONL), ``dpo`` (TRL preference pairs JSONL),
``parquet`` (one row per dataset row, with split and lineage columns) or ``hf`` (a Hugging Face
``datasets`` folder, tar.gz). Returns (bytes, media type, file name).
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from teachloop.catalog.export import export_dataset, lineage
from teachloop.core.errors import Forbidden, InvalidInput, NotFound, TeachloopError
from teachloop.market.entitlements import require
from teachloop.store.db import Database
from teachloop.store.repos.datasets import Datasets
from teachloop.store.repos.sessions import server_secret
from teachloop.store.schema.datasets import Dataset
from teachloop.store.schema.market import MarketEntitlement

DOWNLOAD_FORMATS = ("openai", "dpo", "parquet", "hf")
LINK_TTL = 900
_MEDIA = {"openai": "application/jsonl", "dpo": "application/jsonl", "parquet": "application/vnd.apache.parquet",
          "hf": "application/gzip"}


class LinkExpired(TeachloopError):
    """A signed download link past its expiry (HTTP 410)."""

    status = 410
    code = "link_expired"


def _serializer(secret: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret, salt="teachloop-market-download")


def sign_link(session: Any, org_id: str, entitlement_id: str, fmt: str) -> str:
    """A signed token for downloading the entitlement's dataset in ``fmt`` (see the module docstring)."""
    if fmt not in DOWNLOAD_FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(DOWNLOAD_FORMATS)}, got {fmt!r}", param="format")
    ent = session.get(MarketEntitlement, entitlement_id) if isinstance(entitlement_id, str) else None
    if ent is None or ent.org_id != org_id:
        raise NotFound(f"entitlement {entitlement_id!r} not found", param="entitlement")
    if ent.revoked_at is not None or "download" not in ent.actions:
        raise Forbidden(f"entitlement {ent.id} does not allow downloads (revoked, or not a download licence)")
    return _serializer(server_secret(session, "market-downloads")).dumps({"o": org_id, "e": ent.id, "f": fmt})


def open_link(db: Database, org_id: str, token: str, *, max_age: int = LINK_TTL,
              actor: str = "system") -> tuple[bytes, str, str]:
    """Verify ``token`` and render the dataset (bytes, media type, file name); see the module docstring."""
    with db.session() as s:
        serializer = _serializer(server_secret(s, "market-downloads"))
    try:
        payload = serializer.loads(token, max_age=max_age)
    except SignatureExpired:
        raise LinkExpired(f"this download link expired (links last {max_age} s); ask for a new one") from None
    except BadSignature:
        raise Forbidden("this download link is not valid: its signature does not match (tampered or "
                        "truncated)") from None
    if payload.get("o") != org_id:
        raise Forbidden("this download link was issued to another organisation")
    with db.session() as s:
        ent = s.get(MarketEntitlement, payload["e"])
        if ent is None:
            raise Forbidden("this download link names no entitlement")
        resource_id = ent.resource_id
        require(s, org_id, resource_id, "download", actor=actor, detail={"format": payload["f"]})
        dataset = s.get(Dataset, resource_id)
        assert dataset is not None
        seller, ref, name = dataset.org_id, dataset.id, f"{dataset.name}-v{dataset.version}"
    fmt = payload["f"]
    with tempfile.TemporaryDirectory(prefix="teachloop-dl-") as tmp:
        path = Path(tmp) / "out"
        if fmt in ("openai", "dpo"):
            export_dataset(db, seller, ref, path, fmt=fmt)
            return path.read_bytes(), _MEDIA[fmt], f"{name}.{fmt}.jsonl"
        if fmt == "hf":
            export_dataset(db, seller, ref, path, fmt="hf")
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz") as tar:
                tar.add(path, arcname=name)
            return buf.getvalue(), _MEDIA[fmt], f"{name}.hf.tar.gz"
    return _parquet(db, seller, ref), _MEDIA["parquet"], f"{name}.parquet"


def _parquet(db: Database, org_id: str, dataset_id: str) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with db.session(write=False) as s:
        rows = Datasets(s).rows(org_id, dataset_id)
        records = [{"split": r.split, "content": json.dumps(r.content, ensure_ascii=False), **lineage(r)}
                   for r in rows]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), buf)
    return buf.getvalue()


__all__ = ["DOWNLOAD_FORMATS", "LINK_TTL", "LinkExpired", "open_link", "sign_link"]
