"""Croissant JSON-LD for a dataset listing, written here and validated with ``mlcroissant``.

``croissant_for(dataset, ...)`` describes the snapshot as one JSONL ``FileObject`` (its
content digest as ``sha256``) with a record set whose fields follow the dataset's kind,
plus the licence(s) and the card's size and lineage (``citeAs``-style attribution is left to
the card). ``validate`` loads it with ``mlcroissant.Dataset`` and turns any validation error
into ``InvalidInput``; when ``mlcroissant`` is not installed the JSON-LD is still written and
``validate`` is skipped (``CROISSANT_VALIDATED`` says which).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from teachloop.core.errors import InvalidInput
from teachloop.store.schema.datasets import Dataset

CROISSANT_VALIDATED = importlib.util.find_spec("mlcroissant") is not None

_CONTEXT = {
    "@language": "en", "@vocab": "https://schema.org/", "citeAs": "cr:citeAs", "column": "cr:column",
    "conformsTo": "dct:conformsTo", "cr": "http://mlcommons.org/croissant/", "data": {"@id": "cr:data",
    "@type": "@json"}, "dataType": {"@id": "cr:dataType", "@type": "@vocab"}, "dct": "http://purl.org/dc/terms/",
    "examples": {"@id": "cr:examples", "@type": "@json"}, "extract": "cr:extract", "field": "cr:field",
    "fileProperty": "cr:fileProperty", "fileObject": "cr:fileObject", "fileSet": "cr:fileSet",
    "format": "cr:format", "includes": "cr:includes", "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath", "key": "cr:key", "md5": "cr:md5", "parentField": "cr:parentField",
    "path": "cr:path", "recordSet": "cr:recordSet", "references": "cr:references", "regex": "cr:regex",
    "repeated": "cr:repeated", "replace": "cr:replace", "sc": "https://schema.org/",
    "separator": "cr:separator", "source": "cr:source", "subField": "cr:subField", "transform": "cr:transform",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "samplingRate": "cr:samplingRate", "equivalentProperty": "cr:equivalentProperty",
}
_FIELDS = {"chat": ["messages"], "prompts": ["messages", "answer"], "pairs": ["prompt", "chosen", "rejected"]}


def croissant_for(dataset: Dataset, *, title: str, description: str, licence: list[str],
                  card: dict[str, Any], validate_it: bool = True) -> dict[str, Any]:
    """The Croissant JSON-LD of a dataset snapshot (validated with mlcroissant when installed)."""
    file_id = f"{dataset.name}-v{dataset.version}.jsonl"
    fields = [
        {"@type": "cr:Field", "@id": f"rows/{name}", "name": name, "dataType": "sc:Text",
         "source": {"fileObject": {"@id": file_id}, "extract": {"jsonPath": f"$.content.{name}"}}}
        for name in _FIELDS.get(dataset.kind, ["content"])
    ]
    doc: dict[str, Any] = {
        "@context": _CONTEXT,
        "@type": "sc:Dataset",
        "name": f"{dataset.name}-v{dataset.version}",
        "description": description,
        "conformsTo": "http://mlcommons.org/croissant/1.0",
        "url": f"teachloop://datasets/{dataset.id}",
        "version": f"{dataset.version}.0.0",
        "license": [f"https://spdx.org/licenses/{lic}.html" if not lic.startswith("LicenseRef-") else lic
                    for lic in licence],
        "distribution": [{
            "@type": "cr:FileObject", "@id": file_id, "name": file_id,
            "contentUrl": f"teachloop://datasets/{dataset.id}/rows.jsonl", "encodingFormat": "application/jsonlines",
            "sha256": dataset.digest.removeprefix("sha256:"),
        }],
        "recordSet": [{"@type": "cr:RecordSet", "@id": "rows", "name": "rows", "field": fields}],
        "rai:dataCollection": f"teachloop lineage: {card.get('lineage', {})}",
        "alternateName": title,
        "citeAs": f"{title} (teachloop dataset {dataset.name} v{dataset.version})",
        "datePublished": dataset.created_at.date().isoformat() if dataset.created_at else None,
    }
    if doc["datePublished"] is None:
        del doc["datePublished"]
    if validate_it:
        validate(doc)
    return doc


def validate(doc: dict[str, Any]) -> None:
    """Refuse JSON-LD that ``mlcroissant`` reports errors for (``InvalidInput``, param ``croissant``)."""
    if not CROISSANT_VALIDATED:
        return
    import mlcroissant as mlc

    try:
        mlc.Dataset(jsonld=doc)
    except mlc.ValidationError as err:
        raise InvalidInput(f"the Croissant metadata does not validate: {err}", param="croissant") from None


__all__ = ["CROISSANT_VALIDATED", "croissant_for", "validate"]
