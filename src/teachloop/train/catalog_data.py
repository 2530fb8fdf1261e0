"""Training data named from the catalog: ``data.train = "dataset:NAME@N"`` or ``"dataset:OWNER/NAME@N"``.

Contract. A training run (SFT or DPO) may name a dataset version of the store instead of a
server file: the organisation's own (``NAME[@N]`` or ``ds_...``), or another organisation's
under a grant (``OWNER/NAME[@N]``: a grant by hand, or the one a marketplace purchase records).
``materialize`` resolves it read-only (``store.repos.datasets.Datasets.resolve_usable``: a
version never granted reads exactly like a missing one; a refunded purchase is refused with the
reason from ``catalog.usage.explain_unusable``), exports its rows once in the format the
algorithm reads (``catalog.export.export_dataset``: OpenAI chat JSONL for SFT, DPO pairs for DPO)
into a folder the caller owns, and returns the file with what the run must meter: a granted
dataset is one ``train`` use per run (``Trainer`` meters it with ``catalog.usage.meter_use`` in
its write session, once, at the run's first start). Anything not starting with ``dataset:`` is
a path and is left to ``train.data``. Knows nothing of HTTP; writes nothing to the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from teachloop.catalog.export import export_dataset
from teachloop.catalog.usage import explain_unusable
from teachloop.core.errors import Forbidden, InvalidInput, NotFound
from teachloop.store.db import Database
from teachloop.store.repos.datasets import Datasets

PREFIX = "dataset:"


@dataclass(frozen=True)
class CatalogData:
    """A catalog dataset exported for one run.

    Attributes:
        path: the exported JSONL (inside the caller's folder).
        ref: the version as resolved (``name@N``, with ``OWNER/`` for another organisation's).
        dataset_id: the dataset version's id.
        granted: whether it is another organisation's (used under a grant: metered per run).
    """

    path: Path
    ref: str
    dataset_id: str
    granted: bool


def is_catalog_ref(value: str | None) -> bool:
    """Whether a ``data.train`` / ``data.eval`` value names a catalog dataset (``dataset:...``)."""
    return bool(value) and str(value).startswith(PREFIX)


def materialize(value: str, *, field: str, algorithm: str, database: Database, org_id: str,
                folder: Path) -> CatalogData:
    """Export the dataset ``value`` (``dataset:REF``) names to ``folder``; errors name ``field``.

    ``NotFound`` for a dataset the organisation cannot see, ``Forbidden`` naming why for a refunded
    purchase, ``InvalidInput`` for a dataset whose rows the algorithm cannot read.
    """
    ref = value[len(PREFIX):].strip()
    if not ref:
        raise InvalidInput(f"{field}: name a dataset after 'dataset:' (NAME@N or OWNER/NAME@N)", param=field)
    fmt = "openai" if algorithm == "sft" else "dpo"
    with database.session(write=False) as s:
        try:
            dataset, grant = Datasets(s).resolve_usable(org_id, ref)
        except NotFound as err:
            why = explain_unusable(s, org_id, ref, "train")
            if why is not None:
                raise Forbidden(f"{field}: {why}", param=field) from None
            raise NotFound(f"{field}: {err.message}", param=field) from None
        owner_id, dataset_id = dataset.org_id, dataset.id
        shown = f"{ref.partition('/')[0]}/{dataset.ref}" if grant is not None else dataset.ref
    path = folder / f"{field.replace('.', '-')}.jsonl"
    try:
        export_dataset(database, owner_id, dataset_id, path, fmt=fmt)
    except InvalidInput as err:
        raise InvalidInput(f"{field}: dataset {shown!r} cannot be read as {fmt} rows: {err.message}",
                           param=field) from None
    return CatalogData(path=path, ref=shown, dataset_id=dataset_id, granted=grant is not None)


__all__ = ["PREFIX", "CatalogData", "is_catalog_ref", "materialize"]
