"""teachloop: serve, reward, train and redeploy LoRA-adapted language models in one loop.

Importing ``teachloop`` is cheap: heavy dependencies (torch, transformers,
vllm, psycopg) are imported lazily by the packages that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
