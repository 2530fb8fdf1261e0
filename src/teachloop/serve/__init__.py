"""teachloop.serve (layer L3): OpenAI-compatible inference with adapters, batching, traces and feedback.

- ``Serving`` (``service``): model name -> deployment -> adapter version ->
  rendered prompt -> ``Scheduler`` job -> replies -> durable trace.
- ``Scheduler`` (``scheduler``): one thread per engine, continuous batching of
  every request whatever its adapter.
- ``AdapterPool`` (``adapters``): adapter versions on the engine;
  ``publish_adapter`` / ``folder_digest`` are ``catalog.adapters``'s, re-exported.
- ``TraceWriter`` (``traces``): one writer thread, group commits, a response
  only after its trace committed.
- ``Usage`` (``usage``): each organisation's requests, tokens and traces,
  counted apart (what the stats route shows a caller).
- Request bodies and views, no HTTP: ``chat`` (``ChatCompletionRequest`` ->
  ``ChatInput``), ``completions``, ``responses``, ``wire`` (SSE frames, shared
  checks); ``deployments`` (create, change, roll back) and ``trace_views``
  (traces and feedback) are the services the REST routes call. The routers
  themselves live in ``app/routes/`` (``openai``, ``deployments``, ``traces``, ...);
  ``export`` writes traces as OpenAI JSONL or a Hugging Face dataset.

The registry itself (adapter versions, deployments, traces, feedback) is in
``store.repos.deployments`` and ``store.repos.traces``. Nothing here imports
torch at import time; the scheduler imports the engine's sampler when it starts.
"""

from teachloop.catalog.adapters import folder_digest, publish_adapter
from teachloop.serve.adapters import AdapterPool, engine_name
from teachloop.serve.export import chat_row, export_hf, export_jsonl, iter_traces
from teachloop.serve.scheduler import (
    AsyncSink,
    BatchingEngine,
    GenerationJob,
    Scheduler,
    SchedulerStats,
    TokenSink,
)
from teachloop.serve.service import (
    ChatInput,
    ChatRun,
    ModelNotFound,
    Reply,
    Serving,
    ServingConfig,
    Target,
    canary_bucket,
)
from teachloop.serve.traces import TraceWriter, TraceWriterStats
from teachloop.serve.usage import OrgUsage, Usage

__all__ = [
    "AdapterPool",
    "AsyncSink",
    "BatchingEngine",
    "ChatInput",
    "ChatRun",
    "GenerationJob",
    "ModelNotFound",
    "OrgUsage",
    "Reply",
    "Scheduler",
    "SchedulerStats",
    "Serving",
    "ServingConfig",
    "Target",
    "TokenSink",
    "TraceWriter",
    "TraceWriterStats",
    "Usage",
    "canary_bucket",
    "chat_row",
    "engine_name",
    "export_hf",
    "export_jsonl",
    "folder_digest",
    "iter_traces",
    "publish_adapter",
]
