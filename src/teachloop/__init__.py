"""teachloop: serve, reward, train and redeploy LoRA-adapted language models in one loop.

Importing ``teachloop`` is cheap: heavy dependencies (torch, transformers,
vllm, psycopg) are imported lazily by the packages that need them, and
``teachloop.Client`` (the REST API's Python client, ``teachloop.client``)
only when first used.
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from teachloop.client import Client


def __getattr__(name: str) -> Any:
    if name == "Client":
        from teachloop.client import Client

        return Client
    raise AttributeError(f"module 'teachloop' has no attribute {name!r}")


__all__ = ["Client", "__version__"]
