"""The Tinker wire format: protobuf messages of package ``tinker_public`` and their conversion.

Since SDK 0.25 ``POST /api/v1/forward_backward`` bodies are protobuf
``ForwardBackwardRequest`` (optionally zstd-compressed), and the results of
forward/backward and sampling futures must be protobuf ``ForwardBackwardOutput``
and ``SampleResponse``. The ``.proto`` source is not published; the schema here
is the serialized file descriptor of the SDK 0.38.0 wheel
(``tinker/proto/tinker_public_pb2.py``, Apache-2.0), loaded into a private
descriptor pool so that it never clashes with the SDK's own copy when both are
imported in one process.

``decode_forward_backward`` turns a body into ``ForwardBackwardCall`` (checked:
token ids, tensor lengths, dtypes, loss inputs); ``encode_forward_backward`` and
``encode_sample`` write the results. Every malformed input is an
``InvalidInput`` naming the problem. Conventions (from the SDK's
``request_conv.py`` / ``response_conv.py``): tokens are int32 little-endian
bytes, tensors carry their dtype and shape, a ``BatchedTensor`` holds the
datums' values back to back with int64 *byte* offsets, and an empty top-k cell
is token 0 with logprob -99999.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from teachloop.core.errors import InvalidInput, PayloadTooLarge

#: The serialized ``tinker_public.proto`` file descriptor (SDK 0.38.0).
_DESCRIPTOR = base64.b64decode(
    "ChN0aW5rZXJfcHVibGljLnByb3RvEg10aW5rZXJfcHVibGljIpwDCg5TYW1wbGVSZXNwb25zZRIxCglzZXF1ZW5jZXMYASADKAsy"
    "Hi50aW5rZXJfcHVibGljLlNhbXBsZWRTZXF1ZW5jZRIcCg9wcm9tcHRfbG9ncHJvYnMYAiABKAxIAIgBARI+ChR0b3BrX3Byb21w"
    "dF9sb2dwcm9icxgDIAEoCzIbLnRpbmtlcl9wdWJsaWMuVG9wa0xvZ3Byb2JzSAGIAQESHwoXcHJvbXB0X2NhY2hlX2hpdF90b2tl"
    "bnMYBCABKAUSOgoWdGFyZ2V0X3Byb21wdF9sb2dwcm9icxgFIAEoCzIVLnRpbmtlcl9wdWJsaWMuVGVuc29ySAKIAQESPgoRcHJv"
    "bXB0X2FsdF90b2tlbnMYBiABKAsyHi50aW5rZXJfcHVibGljLlByb21wdEFsdFRva2Vuc0gDiAEBQhIKEF9wcm9tcHRfbG9ncHJv"
    "YnNCFwoVX3RvcGtfcHJvbXB0X2xvZ3Byb2JzQhkKF190YXJnZXRfcHJvbXB0X2xvZ3Byb2JzQhQKEl9wcm9tcHRfYWx0X3Rva2Vu"
    "cyJhCg9Qcm9tcHRBbHRUb2tlbnMSJQoGdG9rZW5zGAEgASgLMhUudGlua2VyX3B1YmxpYy5UZW5zb3ISJwoIbG9ncHJvYnMYAiAB"
    "KAsyFS50aW5rZXJfcHVibGljLlRlbnNvciLQAQoPU2FtcGxlZFNlcXVlbmNlEi4KC3N0b3BfcmVhc29uGAEgASgOMhkudGlua2Vy"
    "X3B1YmxpYy5TdG9wUmVhc29uEg4KBnRva2VucxgCIAEoDBIVCghsb2dwcm9icxgDIAEoDEgAiAEBEj8KFXRvcGtfc2FtcGxlZF9s"
    "b2dwcm9icxgEIAEoCzIbLnRpbmtlcl9wdWJsaWMuVG9wa0xvZ3Byb2JzSAGIAQFCCwoJX2xvZ3Byb2JzQhgKFl90b3BrX3NhbXBs"
    "ZWRfbG9ncHJvYnMiTgoMVG9wa0xvZ3Byb2JzEhEKCXRva2VuX2lkcxgBIAEoDBIQCghsb2dwcm9icxgCIAEoDBIJCgFrGAMgASgN"
    "Eg4KBmxlbmd0aBgEIAEoDSJGCglTcGFyc2VDc3ISDgoGdmFsdWVzGAEgASgMEhQKDGNyb3dfaW5kaWNlcxgCIAEoDBITCgtjb2xf"
    "aW5kaWNlcxgDIAEoDCKJAQoGVGVuc29yEg8KBWRlbnNlGAEgASgMSAASLgoKc3BhcnNlX2NzchgCIAEoCzIYLnRpbmtlcl9wdWJs"
    "aWMuU3BhcnNlQ3NySAASIwoFZHR5cGUYAyABKA4yFC50aW5rZXJfcHVibGljLkRUeXBlEg0KBXNoYXBlGAQgAygDQgoKCGVuY29k"
    "aW5nImsKDUJhdGNoZWRUZW5zb3ISDAoEZGF0YRgBIAEoDBIPCgdvZmZzZXRzGAIgASgMEiMKBWR0eXBlGAMgASgOMhQudGlua2Vy"
    "X3B1YmxpYy5EVHlwZRIWCg50cmFpbGluZ19zaGFwZRgEIAMoAyK4AQoLQXJyYXlSZWNvcmQSEAoIdHlwZV90YWcYASABKAkSNgoG"
    "ZmllbGRzGAIgAygLMiYudGlua2VyX3B1YmxpYy5BcnJheVJlY29yZC5GaWVsZHNFbnRyeRISCgpudW1fZGF0dW1zGAMgASgDGksK"
    "C0ZpZWxkc0VudHJ5EgsKA2tleRgBIAEoCRIrCgV2YWx1ZRgCIAEoCzIcLnRpbmtlcl9wdWJsaWMuQmF0Y2hlZFRlbnNvcjoCOAEi"
    "3QEKFUZvcndhcmRCYWNrd2FyZE91dHB1dBIbChNsb3NzX2ZuX291dHB1dF90eXBlGAEgASgJEjMKD2xvc3NfZm5fb3V0cHV0cxgC"
    "IAMoCzIaLnRpbmtlcl9wdWJsaWMuQXJyYXlSZWNvcmQSQgoHbWV0cmljcxgDIAMoCzIxLnRpbmtlcl9wdWJsaWMuRm9yd2FyZEJh"
    "Y2t3YXJkT3V0cHV0Lk1ldHJpY3NFbnRyeRouCgxNZXRyaWNzRW50cnkSCwoDa2V5GAEgASgJEg0KBXZhbHVlGAIgASgBOgI4ASK4"
    "AwoWRm9yd2FyZEJhY2t3YXJkUmVxdWVzdBIQCghtb2RlbF9pZBgBIAEoCRIOCgZzZXFfaWQYAiABKAUSIgoEZGF0YRgDIAMoCzIU"
    "LnRpbmtlcl9wdWJsaWMuRGF0dW0SDwoHbG9zc19mbhgEIAEoCRJPCg5sb3NzX2ZuX2NvbmZpZxgFIAMoCzI3LnRpbmtlcl9wdWJs"
    "aWMuRm9yd2FyZEJhY2t3YXJkUmVxdWVzdC5Mb3NzRm5Db25maWdFbnRyeRIUCgxmb3J3YXJkX29ubHkYBiABKAgSVAoRbG9zc19m"
    "bl9jb25maWdfdjIYByADKAsyOS50aW5rZXJfcHVibGljLkZvcndhcmRCYWNrd2FyZFJlcXVlc3QuTG9zc0ZuQ29uZmlnVjJFbnRy"
    "eRozChFMb3NzRm5Db25maWdFbnRyeRILCgNrZXkYASABKAkSDQoFdmFsdWUYAiABKAE6AjgBGlUKE0xvc3NGbkNvbmZpZ1YyRW50"
    "cnkSCwoDa2V5GAEgASgJEi0KBXZhbHVlGAIgASgLMh4udGlua2VyX3B1YmxpYy5Mb3NzQ29uZmlnVmFsdWU6AjgBIjwKD0xvc3ND"
    "b25maWdWYWx1ZRIQCgZudW1iZXIYASABKAFIABIOCgR0ZXh0GAIgASgJSABCBwoFdmFsdWUitAIKBURhdHVtEikKC21vZGVsX2lu"
    "cHV0GAEgAygLMhQudGlua2VyX3B1YmxpYy5DaHVuaxI+Cg5sb3NzX2ZuX2lucHV0cxgCIAMoCzImLnRpbmtlcl9wdWJsaWMuRGF0"
    "dW0uTG9zc0ZuSW5wdXRzRW50cnkSOAoRbW9kZWxfaW5wdXRfc3BhbnMYAyADKAsyHS50aW5rZXJfcHVibGljLlByb3ZlbmFuY2VT"
    "cGFuEjoKE2xvc3NfZm5faW5wdXRfc3BhbnMYBCADKAsyHS50aW5rZXJfcHVibGljLlByb3ZlbmFuY2VTcGFuGkoKEUxvc3NGbklu"
    "cHV0c0VudHJ5EgsKA2tleRgBIAEoCRIkCgV2YWx1ZRgCIAEoCzIVLnRpbmtlcl9wdWJsaWMuVGVuc29yOgI4ASKWAQoOUHJvdmVu"
    "YW5jZVNwYW4SPAoNcHJvbXB0X3Rva2VucxgBIAEoCzIjLnRpbmtlcl9wdWJsaWMuUHJvbXB0UHJvdmVuYW5jZVNwYW5IABI+Cg5z"
    "YW1wbGVkX3Rva2VucxgCIAEoCzIkLnRpbmtlcl9wdWJsaWMuU2FtcGxlZFByb3ZlbmFuY2VTcGFuSABCBgoEc3BhbiJLChRQcm9t"
    "cHRQcm92ZW5hbmNlU3BhbhITCgtzZXF1ZW5jZV9pZBgBIAEoCRIOCgZvZmZzZXQYAiABKAMSDgoGbGVuZ3RoGAMgASgDIkwKFVNh"
    "bXBsZWRQcm92ZW5hbmNlU3BhbhITCgtzZXF1ZW5jZV9pZBgBIAEoCRIOCgZvZmZzZXQYAiABKAMSDgoGbGVuZ3RoGAMgASgDIp8B"
    "CgVDaHVuaxI3CgxlbmNvZGVkX3RleHQYASABKAsyHy50aW5rZXJfcHVibGljLkVuY29kZWRUZXh0Q2h1bmtIABIqCgVpbWFnZRgC"
    "IAEoCzIZLnRpbmtlcl9wdWJsaWMuSW1hZ2VDaHVua0gAEigKBGRtZWwYAyABKAsyGC50aW5rZXJfcHVibGljLkRtZWxDaHVua0gA"
    "QgcKBWNodW5rIiIKEEVuY29kZWRUZXh0Q2h1bmsSDgoGdG9rZW5zGAEgASgMIrYBCgpJbWFnZUNodW5rEgwKBGRhdGEYASABKAwS"
    "DgoGZm9ybWF0GAIgASgJEhwKD2V4cGVjdGVkX3Rva2VucxgDIAEoBUgAiAEBEkAKE292ZXJyaWRlX2RpbWVuc2lvbnMYBCABKAsy"
    "Hi50aW5rZXJfcHVibGljLkltYWdlRGltZW5zaW9uc0gBiAEBQhIKEF9leHBlY3RlZF90b2tlbnNCFgoUX292ZXJyaWRlX2RpbWVu"
    "c2lvbnMiMAoPSW1hZ2VEaW1lbnNpb25zEg0KBXdpZHRoGAEgASgNEg4KBmhlaWdodBgCIAEoDSIZCglEbWVsQ2h1bmsSDAoEZG1l"
    "bBgBIAEoDCKlAgoOU2FtcGxpbmdQYXJhbXMSFwoKbWF4X3Rva2VucxgBIAEoBUgBiAEBEhEKBHNlZWQYAiABKARIAogBARIYCgt0"
    "ZW1wZXJhdHVyZRgDIAEoAkgDiAEBEhIKBXRvcF9rGAQgASgFSASIAQESEgoFdG9wX3AYBSABKAJIBYgBARIvCglzdG9wX3N0cnMY"
    "BiABKAsyGi50aW5rZXJfcHVibGljLlN0b3BTdHJpbmdzSAASMAoLc3RvcF90b2tlbnMYByABKAsyGS50aW5rZXJfcHVibGljLlN0"
    "b3BUb2tlbnNIAEIGCgRzdG9wQg0KC19tYXhfdG9rZW5zQgcKBV9zZWVkQg4KDF90ZW1wZXJhdHVyZUIICgZfdG9wX2tCCAoGX3Rv"
    "cF9wIh0KC1N0b3BTdHJpbmdzEg4KBnZhbHVlcxgBIAMoCSIcCgpTdG9wVG9rZW5zEg4KBnZhbHVlcxgBIAMoBSo6CgpTdG9wUmVh"
    "c29uEhQKEFNUT1BfUkVBU09OX1NUT1AQABIWChJTVE9QX1JFQVNPTl9MRU5HVEgQASpnCgVEVHlwZRIVChFEVFlQRV9VTlNQRUNJ"
    "RklFRBAAEhEKDURUWVBFX0ZMT0FUMzIQARIPCgtEVFlQRV9JTlQ2NBACEg8KC0RUWVBFX0lOVDMyEAMSEgoORFRZUEVfQkZMT0FU"
    "MTYQBGIGcHJvdG8z"
)

#: Names of the per-datum loss inputs the engine's losses read.
LOSS_INPUTS = frozenset({"target_tokens", "weights", "advantages", "logprobs", "mask"})
#: Empty top-k cells (fewer than k candidates).
TOPK_EMPTY_LOGPROB = -99999.0
#: Largest decompressed forward_backward body accepted (zstd).
MAX_DECOMPRESSED = 512 * 1024 * 1024

_DTYPE_FLOAT32, _DTYPE_INT64, _DTYPE_INT32, _DTYPE_BFLOAT16 = 1, 2, 3, 4


@cache
def messages() -> dict[str, Any]:
    """The message classes by name (built once, in a private descriptor pool)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(_DESCRIPTOR))
    file = pool.FindFileByName("tinker_public.proto")
    return {name: message_factory.GetMessageClass(d) for name, d in file.message_types_by_name.items()}


@dataclass
class TinkerDatum:
    """One decoded ``Datum``: the model input tokens and its loss inputs, checked for length.

    Attributes:
        tokens: the model input (text chunks concatenated).
        inputs: loss inputs by name, each a flat list of ``len(tokens)`` numbers.
    """

    tokens: list[int]
    inputs: dict[str, list[float] | list[int]] = field(default_factory=dict)


@dataclass
class ForwardBackwardCall:
    """A decoded ``ForwardBackwardRequest``.

    Attributes:
        model_id: the training model.
        seq_id: the request's place in the model's order (0 means unset).
        loss_fn: the loss name.
        loss_fn_config: loss knobs (``loss_fn_config_v2`` preferred over the legacy float map).
        forward_only: True for ``TrainingClient.forward``.
        data: the datums.
        error: what is wrong with the datums, if anything (the request still names its model and
            ``seq_id``, so it can fail in its turn).
    """

    model_id: str
    seq_id: int
    loss_fn: str
    loss_fn_config: dict[str, float | str]
    forward_only: bool
    data: list[TinkerDatum]
    error: InvalidInput | None = None


def decompress(body: bytes, encoding: str | None) -> bytes:
    """``body`` decoded from ``Content-Encoding`` ``encoding`` (identity or zstd)."""
    if not encoding or encoding.strip().lower() == "identity":
        return body
    if encoding.strip().lower() != "zstd":
        raise InvalidInput(f"Content-Encoding {encoding!r} is not supported; send zstd or none", param="body")
    try:
        import zstandard
    except ImportError:
        raise InvalidInput("zstd bodies need the `tinker` extra (zstandard) on the server", param="body") from None
    try:
        return zstandard.ZstdDecompressor().decompress(body, max_output_size=MAX_DECOMPRESSED)
    except zstandard.ZstdError as err:
        if "size" in str(err).lower() and "exceed" in str(err).lower():
            raise PayloadTooLarge(f"the decompressed body exceeds {MAX_DECOMPRESSED} bytes") from None
        raise InvalidInput(f"the zstd body cannot be decompressed: {err}", param="body") from None


def _tensor(msg: Any, name: str, index: int) -> list[float] | list[int]:
    kinds = {_DTYPE_FLOAT32: np.float32, _DTYPE_INT64: np.int64, _DTYPE_INT32: np.int32}
    np_dtype = kinds.get(msg.dtype)
    if np_dtype is None:
        raise InvalidInput(f"data[{index}].loss_fn_inputs[{name!r}] has unsupported dtype {msg.dtype}", param=name)
    encoding = msg.WhichOneof("encoding")
    try:
        if encoding == "sparse_csr":
            values = np.frombuffer(msg.sparse_csr.values, dtype=np_dtype)
            crow = np.frombuffer(msg.sparse_csr.crow_indices, dtype=np.int64)
            col = np.frombuffer(msg.sparse_csr.col_indices, dtype=np.int64)
            shape = list(msg.shape)
            if len(shape) != 2 or len(crow) != shape[0] + 1 or len(col) != len(values):
                raise ValueError("inconsistent CSR layout")
            dense = np.zeros(shape, dtype=np_dtype)
            for r in range(shape[0]):
                dense[r, col[crow[r]:crow[r + 1]]] = values[crow[r]:crow[r + 1]]
            arr = dense
        else:
            arr = np.frombuffer(msg.dense, dtype=np_dtype)
            shape = list(msg.shape)
            if shape and int(np.prod(shape)) != arr.size:
                raise ValueError(f"shape {shape} does not hold {arr.size} values")
    except ValueError as err:
        raise InvalidInput(f"data[{index}].loss_fn_inputs[{name!r}] is malformed: {err}", param=name) from None
    if arr.ndim > 1 or (len(msg.shape) > 1 and name != "target_tokens"):
        raise InvalidInput(
            f"data[{index}].loss_fn_inputs[{name!r}] has shape {list(msg.shape)}; only one value per token is "
            "supported (no distributions over targets)",
            param=name,
        )
    flat = arr.reshape(-1)
    if np_dtype is np.float32:
        if not np.isfinite(flat).all():
            raise InvalidInput(f"data[{index}].loss_fn_inputs[{name!r}] holds NaN or infinite values", param=name)
        return [float(x) for x in flat.tolist()]
    return [int(x) for x in flat.tolist()]


def decode_forward_backward(body: bytes) -> ForwardBackwardCall:
    """Parse and check a protobuf ``ForwardBackwardRequest``.

    An unparseable body raises ``InvalidInput``; a parsed one whose datums are wrong comes back with
    ``error`` set (naming the first problem) and no data.
    """
    from google.protobuf.message import DecodeError

    msg = messages()["ForwardBackwardRequest"]()
    try:
        msg.ParseFromString(body)
    except DecodeError as err:
        raise InvalidInput(f"the body is not a protobuf ForwardBackwardRequest: {err}", param="body") from None
    config: dict[str, float | str] = {k: float(v) for k, v in msg.loss_fn_config.items()}
    for key, value in msg.loss_fn_config_v2.items():
        kind = value.WhichOneof("value")
        config[key] = value.text if kind == "text" else float(value.number)
    call = ForwardBackwardCall(
        model_id=msg.model_id, seq_id=int(msg.seq_id), loss_fn=msg.loss_fn, loss_fn_config=config,
        forward_only=bool(msg.forward_only), data=[],
    )
    try:
        call.data = _datums(msg)
    except InvalidInput as err:
        call.error = err
    return call


def _datums(msg: Any) -> list[TinkerDatum]:
    data: list[TinkerDatum] = []
    for i, datum in enumerate(msg.data):
        tokens: list[int] = []
        for chunk in datum.model_input:
            kind = chunk.WhichOneof("chunk")
            if kind != "encoded_text":
                raise InvalidInput(
                    f"data[{i}] has a {kind or 'empty'} chunk; this server trains text models only", param="model_input"
                )
            raw = chunk.encoded_text.tokens
            if len(raw) % 4:
                raise InvalidInput(f"data[{i}] has a token chunk of {len(raw)} bytes (not int32)", param="model_input")
            tokens.extend(int(t) for t in np.frombuffer(raw, dtype="<i4").tolist())
        if not tokens:
            raise InvalidInput(f"data[{i}] has an empty model_input", param="model_input")
        inputs = {name: _tensor(t, name, i) for name, t in datum.loss_fn_inputs.items()}
        for name, values in inputs.items():
            if len(values) != len(tokens):
                raise InvalidInput(
                    f"data[{i}].loss_fn_inputs[{name!r}] has {len(values)} values; the model input has "
                    f"{len(tokens)} tokens",
                    param=name,
                )
        data.append(TinkerDatum(tokens, inputs))
    return data


def _batched(values: Sequence[Sequence[float]]) -> Any:
    bt = messages()["BatchedTensor"]()
    flat = np.concatenate([np.asarray(v, dtype=np.float32) for v in values]) if values else np.zeros(0, np.float32)
    lengths = np.asarray([0] + [len(v) * 4 for v in values], dtype=np.int64)
    bt.data = flat.astype("<f4").tobytes()
    bt.offsets = np.cumsum(lengths).astype("<i8").tobytes()
    bt.dtype = _DTYPE_FLOAT32
    return bt


def encode_forward_backward(outputs: Mapping[str, Sequence[Sequence[float]]], metrics: Mapping[str, float]) -> bytes:
    """A protobuf ``ForwardBackwardOutput``: per-datum float32 ``outputs`` fields and ``metrics``."""
    out = messages()["ForwardBackwardOutput"]()
    out.loss_fn_output_type = "ArrayRecord"
    record = out.loss_fn_outputs.add()
    record.type_tag = "ArrayRecord"
    record.num_datums = len(next(iter(outputs.values()))) if outputs else 0
    for name, values in outputs.items():
        record.fields[name].CopyFrom(_batched(values))
    for key, value in metrics.items():
        out.metrics[key] = float(value)
    return bytes(out.SerializeToString())


@dataclass
class EncodedSequence:
    """One sampled sequence to encode.

    Attributes:
        tokens: the sampled tokens.
        logprobs: their logprobs.
        stop_reason: ``stop`` or ``length``.
        topk: per token, the top-k (token, logprob) pairs (empty when not asked).
    """

    tokens: list[int]
    logprobs: list[float]
    stop_reason: str
    topk: list[list[tuple[int, float]]] = field(default_factory=list)


def _topk(msg: Any, rows: Sequence[Sequence[tuple[int, float]]], k: int) -> None:
    ids = np.zeros((len(rows), k), dtype="<i4")
    lps = np.full((len(rows), k), TOPK_EMPTY_LOGPROB, dtype="<f4")
    for r, row in enumerate(rows):
        for c, (tok, lp) in enumerate(row[:k]):
            ids[r, c] = tok
            lps[r, c] = lp
    msg.token_ids = ids.tobytes()
    msg.logprobs = lps.tobytes()
    msg.k = k
    msg.length = len(rows)


def encode_sample(
    sequences: Sequence[EncodedSequence],
    *,
    prompt_logprobs: Sequence[float | None] | None = None,
    topk_prompt: Sequence[Sequence[tuple[int, float]]] | None = None,
    topk_k: int = 0,
) -> bytes:
    """A protobuf ``SampleResponse`` (``None`` prompt logprobs are NaN on the wire)."""
    out = messages()["SampleResponse"]()
    for seq in sequences:
        s = out.sequences.add()
        s.stop_reason = 1 if seq.stop_reason == "length" else 0
        s.tokens = np.asarray(seq.tokens, dtype="<i4").tobytes()
        s.logprobs = np.asarray(seq.logprobs, dtype="<f4").tobytes()
        if seq.topk and topk_k:
            _topk(s.topk_sampled_logprobs, seq.topk, topk_k)
    if prompt_logprobs is not None:
        values = [math.nan if v is None else v for v in prompt_logprobs]
        out.prompt_logprobs = np.asarray(values, dtype="<f4").tobytes()
    if topk_prompt is not None and topk_k:
        _topk(out.topk_prompt_logprobs, topk_prompt, topk_k)
    return bytes(out.SerializeToString())


__all__ = [
    "LOSS_INPUTS",
    "EncodedSequence",
    "ForwardBackwardCall",
    "TinkerDatum",
    "decode_forward_backward",
    "decompress",
    "encode_forward_backward",
    "encode_sample",
    "messages",
]
