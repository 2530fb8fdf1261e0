"""``EngineCompleter``: the engine behind a renderer as a ``core.rl.ChatCompleter``.

Environments talk in chat messages; this adapter renders them to token ids,
samples through the engine and parses the reply back into a message, keeping
the token ids and sampler logprobs of the turn (``Completion.turn``) so
training never re-tokenises. Concurrent ``complete`` calls made in the same
event-loop tick are gathered into one ``engine.sample`` call per distinct
(sampling params, n), so a group of episodes shares one batched forward pass.

When ``params.stop`` is None, sampling stops at the template's end-of-turn
tokens (not only the model's EOS). With a seed, results depend on which calls
were batched together.

``prefix_cache=True`` asks an engine with a prefix cache (``TorchEngine``) to
reuse the keys/values of prompt prefixes it prefilled before: every turn of a
multi-turn episode extends the previous turn's prompt, and every episode of a
group (every task of ``guess_number``) starts with the same system prompt, so
a turn prefills only its new tokens instead of the whole conversation. The
sampled tokens and logprobs are those of a whole prefill up to float32
rounding; engines without a prefix cache ignore the flag.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from teachloop.core.chat import Message, ToolSpec
from teachloop.core.rl import Completion, ModelTurn
from teachloop.core.sampling import SampledSequence, SamplingParams
from teachloop.engine.base import Engine
from teachloop.render import Renderer


@dataclass
class _Pending:
    prompt: list[int]
    n: int
    params: SamplingParams
    tools: list[ToolSpec] | None
    future: asyncio.Future[list[Completion]]


class EngineCompleter:
    """A ``ChatCompleter`` over ``engine`` + ``renderer`` (optionally through ``adapter``)."""

    def __init__(self, engine: Engine, renderer: Renderer, adapter: str | None = None, *,
                 prefix_cache: bool = False) -> None:
        self.engine = engine
        self.renderer = renderer
        self.adapter = adapter
        self.prefix_cache = prefix_cache
        self._pending: list[_Pending] = []
        self._flush_task: asyncio.Task[None] | None = None

    async def complete(
        self,
        messages: list[Message],
        params: SamplingParams,
        *,
        n: int = 1,
        tools: list[ToolSpec] | None = None,
    ) -> list[Completion]:
        """``n`` replies to ``messages``, each with its token-level ``ModelTurn``."""
        prompt = self.renderer.build_prompt(messages, tools)
        if params.stop is None:
            params = params.model_copy(update={"stop": tuple(self.renderer.stop_token_ids())})
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Completion]] = loop.create_future()
        self._pending.append(_Pending(prompt, n, params, tools, fut))
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = loop.create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let every coroutine scheduled in this tick enqueue first
        while self._pending:
            pending, self._pending = self._pending, []
            groups: dict[tuple[str, int], list[_Pending]] = {}
            for p in pending:
                groups.setdefault((p.params.model_dump_json(), p.n), []).append(p)
            for items in groups.values():
                try:
                    prompts, n, params = [p.prompt for p in items], items[0].n, items[0].params
                    results = await asyncio.to_thread(self._sample, prompts, n, params)
                except Exception as err:  # delivered to every waiter of this group
                    for p in items:
                        if not p.future.done():
                            p.future.set_exception(err)
                    continue
                for p, seqs in zip(items, results, strict=True):
                    completions = [
                        Completion(
                            message=self.renderer.parse_reply(s.tokens, p.tools),
                            turn=ModelTurn(
                                prompt_tokens=tuple(p.prompt),
                                tokens=tuple(s.tokens),
                                logprobs=tuple(s.logprobs),
                                stop_reason=s.stop_reason,
                            ),
                        )
                        for s in seqs
                    ]
                    if not p.future.done():
                        p.future.set_result(completions)

    def _sample(self, prompts: list[list[int]], n: int, params: SamplingParams) -> list[list[SampledSequence]]:
        if self.prefix_cache:
            return self.engine.sample(prompts, n, params, self.adapter, prefix_cache=True)
        return self.engine.sample(prompts, n, params, self.adapter)


__all__ = ["EngineCompleter"]
