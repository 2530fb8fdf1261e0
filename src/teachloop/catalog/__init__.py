"""teachloop.catalog (layer L2+): what is published and licensed.

Contract. ``catalog`` owns the records other organisations, deployments and
runs depend on staying exactly what they were:

- dataset versions and their row lineage (``datasets.record_snapshot``: the
  canonical blob, then the immutable version), licences (``imports.check_license``)
  and their JSON views (``export``: versions, rows with lineage, grants);
- dataset import and export formats (``imports``: OpenAI chat/preference and
  DPO JSONL in, expert labels; ``export``: OpenAI, DPO and Hugging Face out);
- adapter publishing and digests (``adapters``: one ``folder_digest``, one
  ``publish_adapter``, whoever publishes: ``deploy push``, training, the loop);
- environment references (``envref``: a reference resolved to an environment
  pinned by content digest; published versions fetched and verified);
- environment publishing (``environments``: one ``publish_package`` -- checks,
  reproducible archive, digest, the version with its check report -- and one
  ``yank_version``, whoever publishes: ``teachloop env publish``, ``POST /api/envs``);
- usage of another organisation's resources (``usage``: the ``UsageGate`` seam
  ``market`` implements and ``app``/``cli`` install, through which ``loop``
  checks and meters each use of a bought dataset without importing ``market``).

It sits below ``serve``, ``train``, ``loop``, ``tinker``, ``work`` and
``market`` (they use it; ``work`` and ``market`` reach datasets and adapters
through it without importing ``loop`` or ``train``) and above ``store``,
``envs`` and ``engine``; it never imports an L3 package, ``app`` or ``cli``
(the import-linter contract in pyproject.toml says so). Module references are
imports, never ``"package.module:Attr"`` strings. Knows nothing of HTTP.
"""

from teachloop.catalog.adapters import adapter_key, folder_digest, publish_adapter, publish_run_adapter
from teachloop.catalog.datasets import record_snapshot
from teachloop.catalog.environments import (
    ChecksFailed,
    Published,
    publish_package,
    unpack_package,
    yank_version,
)
from teachloop.catalog.envref import (
    ResolvedEnv,
    fetch_package,
    is_hub_ref,
    local_digest,
    meter_env_run,
    resolve_env,
)
from teachloop.catalog.export import FORMATS, dataset_json, export_dataset, grant_json, lineage, row_json
from teachloop.catalog.imports import (
    IMPORT_FORMATS,
    IMPORT_KINDS,
    check_license,
    import_dataset,
    parse_rows,
    read_jsonl,
)

__all__ = [
    "FORMATS",
    "IMPORT_FORMATS",
    "IMPORT_KINDS",
    "ChecksFailed",
    "Published",
    "ResolvedEnv",
    "adapter_key",
    "check_license",
    "dataset_json",
    "export_dataset",
    "fetch_package",
    "folder_digest",
    "grant_json",
    "import_dataset",
    "is_hub_ref",
    "lineage",
    "local_digest",
    "meter_env_run",
    "parse_rows",
    "publish_adapter",
    "publish_package",
    "publish_run_adapter",
    "read_jsonl",
    "record_snapshot",
    "resolve_env",
    "row_json",
    "unpack_package",
    "yank_version",
]
