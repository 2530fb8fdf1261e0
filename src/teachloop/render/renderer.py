"""The renderer: chat messages <-> token ids through the model's own chat template.

Contract (``docs/models.md`` has the long form):

- ``build_prompt(messages)`` is the token ids a model continues from to write the
  next assistant message; ``build_supervised(messages)`` is (tokens, mask) with mask 1
  exactly on the tokens of the trained assistant messages, their end-of-turn token
  included, and 0 on everything else (system/user/tool text, the assistant header).
- Text is cut at the boundaries of every assistant message (where its content starts
  and where its end-of-turn ends) and each piece is tokenised on its own, so
  ``build_prompt(msgs) + encode(reply + end_of_turn) == build_supervised(msgs + [reply])[0]``
  and the prompt of any turn is a prefix of the tokens of the whole conversation.
  The boundaries come from rendering conversation prefixes and comparing the text,
  so no template layout is assumed; a template whose earlier turns change when a
  later one is added raises ``ModelError`` (register a renderer for it).
- Control tokens (the tokenizer's special tokens) written inside messages or tool
  definitions are tokenised as ordinary text, so a user cannot close a turn or
  forge a system message by typing ``<|im_end|>``; only the template emits them.
- Tools go to the template (``tools=``) when it uses them; otherwise they are
  described in a system section and tool calls/results are written inline in the
  Hermes ``<tool_call>`` convention (``render/tools.py``). ``parse_reply`` reads
  that convention back.

The renderer knows nothing about models, sampling or training: a tokenizer in,
token ids and messages out. ``transformers`` is only used through the tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import ValidationError

from teachloop.core.chat import Message, ToolSpec
from teachloop.core.errors import InvalidInput, ModelError, first_line
from teachloop.render.tools import arguments_object, inline_tools, parse_tool_calls

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TrainOn = Literal["last_assistant", "all_assistant"]
MessageLike = Message | Mapping[str, Any]
ToolLike = ToolSpec | Mapping[str, Any]

# Control tokens found in user strings are swapped for "\ue000<index>\ue001" before rendering, and
# tokenised as text afterwards. Private-use characters: no template or tokenizer gives them meaning.
_MARK_RE = re.compile("\ue000(\\d+)\ue001")
_PROBE = "\ue002teachloop\ue002"


class Renderer:
    """Messages <-> token ids for one tokenizer and chat template.

    Args:
        tokenizer: a Hugging Face tokenizer (``PreTrainedTokenizerBase``).
        chat_template: a Jinja chat template to use instead of the tokenizer's own.
        name: the name this renderer is registered under (``render.registry``).
        sanitize: tokenise control tokens found in messages as text (default on).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        chat_template: str | None = None,
        name: str = "chat_template",
        sanitize: bool = True,
    ) -> None:
        template = chat_template or tokenizer.chat_template
        if isinstance(template, dict):  # named templates: the default one
            template = template.get("default") or next(iter(template.values()), None)
        if not isinstance(template, str) or not template.strip():
            raise ModelError(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; "
                "pass chat_template= or pick a renderer by name (e.g. 'chatml')"
            )
        self.tokenizer = tokenizer
        self.chat_template = template
        self.name = name
        self.sanitize = sanitize
        self.uses_tools = _template_uses(template, "tools")
        self._control = _control_tokens(tokenizer)
        self._control_re = (
            re.compile("|".join(re.escape(t) for t in sorted(self._control, key=len, reverse=True)))
            if self._control
            else None
        )
        self.end_of_turn: str | None = self._probe_end_of_turn()
        self._stop_ids: list[int] | None = None

    @classmethod
    def from_pretrained(cls, path: str | Path, *, name: str | None = None) -> Renderer:
        """The renderer for the tokenizer saved in folder ``path`` (registry: ``name`` or the best match)."""
        try:
            from transformers import AutoTokenizer
        except ImportError as err:  # pragma: no cover - transformers is a dependency
            raise ModelError(f"loading a tokenizer needs transformers: {err}") from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as err:
            raise ModelError(f"cannot load a tokenizer from {path}: {str(err).strip().splitlines()[0]}") from None
        from teachloop.render.registry import renderer_for

        return renderer_for(tokenizer, name)

    # ---------------------------------------------------------------------------------------------- tokens

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, special tokens recognised, none added (no BOS)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, tokens: Sequence[int]) -> str:
        """Text of ``tokens``, special tokens kept."""
        return str(self.tokenizer.decode(list(tokens), skip_special_tokens=False))

    def stop_sequences(self) -> list[str]:
        """Strings that end an assistant turn: the template's end-of-turn, then the eos token."""
        out: list[str] = []
        for s in (self.end_of_turn, self.tokenizer.eos_token):
            if isinstance(s, str) and s and s not in out:
                out.append(s)
        return out

    def stop_token_ids(self) -> list[int]:
        """Token ids that end an assistant turn (each stop sequence that is a single token)."""
        if self._stop_ids is None:
            self._stop_ids = self._find_stop_token_ids()
        return list(self._stop_ids)

    def _find_stop_token_ids(self) -> list[int]:
        out: list[int] = []
        for s in self.stop_sequences():
            ids = self.encode(s)
            if len(ids) == 1 and ids[0] not in out:
                out.append(ids[0])
        eos = self.tokenizer.eos_token_id
        if isinstance(eos, int) and eos not in out:
            out.append(eos)
        return out

    # ---------------------------------------------------------------------------------------------- render

    def render_text(
        self,
        messages: Sequence[MessageLike],
        tools: Sequence[ToolLike] | None = None,
        add_generation_prompt: bool = False,
    ) -> str:
        """The conversation as the template writes it (for display and debugging)."""
        conv, tool_dicts = self._prepare(messages, tools)
        return self._unmark(self._render(conv, tool_dicts, add_generation_prompt))

    def build_prompt(
        self,
        messages: Sequence[MessageLike],
        tools: Sequence[ToolLike] | None = None,
        add_generation_prompt: bool = True,
    ) -> list[int]:
        """Token ids the model continues from (the assistant header appended unless told not to)."""
        conv, tool_dicts = self._prepare(messages, tools)
        text, spans = self._layout(conv, tool_dicts, add_generation_prompt)
        tokens: list[int] = []
        pos = 0
        for start, end, _ in spans:
            tokens += self._encode_marked(text[pos:start]) + self._encode_marked(text[start:end])
            pos = end
        return tokens + self._encode_marked(text[pos:])

    def build_supervised(
        self,
        messages: Sequence[MessageLike],
        tools: Sequence[ToolLike] | None = None,
        train_on: TrainOn = "last_assistant",
    ) -> tuple[list[int], list[int]]:
        """(tokens, mask) for supervised training; mask is 1 on the trained assistant messages only.

        ``train_on``: ``"last_assistant"`` or ``"all_assistant"``. The tokens end with
        the end-of-turn of the last trained message; later text would carry no loss.
        An assistant message at position 0 (nothing before it) is never trained.
        """
        if train_on not in ("last_assistant", "all_assistant"):
            raise InvalidInput(
                f"train_on must be 'last_assistant' or 'all_assistant', got {train_on!r}", param="train_on"
            )
        conv, tool_dicts = self._prepare(messages, tools)
        text, spans = self._layout(conv, tool_dicts, False)
        if not spans:
            raise InvalidInput("no assistant message to train on (after the first message)", param="messages")
        trained = {j for _, _, j in spans} if train_on == "all_assistant" else {spans[-1][2]}
        tokens: list[int] = []
        mask: list[int] = []
        pos = 0
        last = max(trained)
        for start, end, j in spans:
            if j > last:
                break
            head = self._encode_marked(text[pos:start])
            body = self._encode_marked(text[start:end])
            on = 1 if j in trained else 0
            tokens += head + body
            mask += [0] * len(head) + [on] * len(body)
            pos = end
        return tokens, mask

    def parse_reply(self, reply: Sequence[int] | str, tools: Sequence[ToolLike] | None = None) -> Message:
        """The assistant message in a sampled reply (token ids or text); never raises on odd output.

        Stops at the first stop token/sequence, then reads ``<tool_call>`` blocks, and,
        when ``tools`` were offered, a reply that is only a JSON call naming one of them.
        """
        if isinstance(reply, str):
            text = reply
        else:
            ids = list(reply)
            stops = set(self.stop_token_ids())
            cut = next((i for i, t in enumerate(ids) if t in stops), len(ids))
            text = self.decode(ids[:cut])
        for stop in self.stop_sequences():
            idx = text.find(stop)
            if idx >= 0:
                text = text[:idx]
        specs = _tool_specs(tools)
        content, calls = parse_tool_calls(text, specs or None)
        return Message(role="assistant", content=content, tool_calls=calls)

    # ---------------------------------------------------------------------------------------------- internals

    def _prepare(
        self, messages: Sequence[MessageLike], tools: Sequence[ToolLike] | None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        """Validated messages as template dicts (tools inlined if the template cannot take them), marked."""
        if isinstance(messages, (str, bytes)) or not messages:
            raise InvalidInput("messages must be a non-empty list of chat messages", param="messages")
        msgs = [_message(m, i) for i, m in enumerate(messages)]
        specs = _tool_specs(tools)
        if self.uses_tools:
            conv = [_template_message(m) for m in msgs]
            tool_dicts = [t.to_openai() for t in specs] if specs else None
        else:
            conv = [_template_message(m) for m in inline_tools(msgs, specs)]
            tool_dicts = None
        return self._mark(conv), self._mark(tool_dicts)

    def _render(self, conv: list[dict[str, Any]], tools: list[dict[str, Any]] | None, gen: bool) -> str:
        try:
            out = self.tokenizer.apply_chat_template(
                conv, tools=cast(Any, tools), chat_template=self.chat_template, tokenize=False, add_generation_prompt=gen
            )
        except Exception as err:  # jinja errors, raise_exception() in templates
            raise InvalidInput(f"the chat template of renderer {self.name!r} rejected the messages: "
                               f"{first_line(err)}") from None
        return str(out)

    def _layout(
        self, conv: list[dict[str, Any]], tools: list[dict[str, Any]] | None, gen: bool
    ) -> tuple[str, list[tuple[int, int, int]]]:
        """The rendered text and (start, end, index) of every assistant message after position 0.

        start: where the message's own text begins (after its header); end: just past its
        end-of-turn (or its text, right-stripped, where the template has none).
        """
        text = self._render(conv, tools, gen)
        spans: list[tuple[int, int, int]] = []
        for j, m in enumerate(conv):
            if m["role"] != "assistant" or j == 0:
                continue
            before = self._render(conv[:j], tools, True)
            upto = self._render(conv[: j + 1], tools, False)
            if not (upto.startswith(before) and text.startswith(upto)):
                raise ModelError(
                    f"chat template of renderer {self.name!r} is not prefix-stable (earlier turns render "
                    "differently once later ones are added); register a renderer for it in render.registry"
                )
            spans.append((len(before), len(before) + self._message_end(upto[len(before) :]), j))
        return text, spans

    def _message_end(self, chunk: str) -> int:
        """Length of an assistant chunk up to and including its end-of-turn."""
        if self.end_of_turn:
            idx = chunk.rfind(self.end_of_turn)
            if idx >= 0:
                return idx + len(self.end_of_turn)
        return len(chunk.rstrip())

    def _probe_end_of_turn(self) -> str | None:
        """The text the template writes right after an assistant message (its first control token)."""
        conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}]
        try:
            text = self._render(conv, None, False)
        except InvalidInput as err:
            raise ModelError(f"cannot probe the chat template of renderer {self.name!r}: {err}") from None
        if _PROBE not in text:
            raise ModelError(f"chat template of renderer {self.name!r} does not write assistant messages")
        after = text[text.rindex(_PROBE) + len(_PROBE) :].strip()
        if not after:
            return None
        for token in sorted(self._control, key=len, reverse=True):
            if after.startswith(token):
                return token
        return after.splitlines()[0].strip()

    def _mark(self, value: Any) -> Any:
        """``value`` with control tokens in every string replaced by private markers."""
        if not self.sanitize or self._control_re is None:
            return value
        pattern = self._control_re
        index = {t: i for i, t in enumerate(self._control)}
        if isinstance(value, str):
            return pattern.sub(lambda m: f"\ue000{index[m.group(0)]}\ue001", value)
        if isinstance(value, list):
            return [self._mark(v) for v in value]
        if isinstance(value, dict):
            return {k: self._mark(v) for k, v in value.items()}
        return value

    def _unmark(self, text: str) -> str:
        return _MARK_RE.sub(lambda m: self._control[int(m.group(1))], text)

    def _encode_marked(self, text: str) -> list[int]:
        """Tokens of rendered text: template control tokens as tokens, marked ones as plain text."""
        if not text:
            return []
        if "\ue000" not in text:
            return self.encode(text)
        out: list[int] = []
        pos = 0
        for m in _MARK_RE.finditer(text):
            out += self.encode(text[pos : m.start()]) if m.start() > pos else []
            token = self._control[int(m.group(1))]
            out += list(self.tokenizer.encode(token, add_special_tokens=False, split_special_tokens=True))
            pos = m.end()
        return out + (self.encode(text[pos:]) if pos < len(text) else [])

    def __repr__(self) -> str:
        return f"Renderer(name={self.name!r}, end_of_turn={self.end_of_turn!r}, tools={self.uses_tools})"


# -------------------------------------------------------------------------------------------------- helpers


def _message(m: MessageLike, i: int) -> Message:
    if isinstance(m, Message):
        return m
    try:
        return Message.model_validate(dict(m))
    except (ValidationError, TypeError, ValueError) as err:
        first = str(err).strip().splitlines()
        raise InvalidInput(f"messages[{i}] is not a chat message: {first[-1] if first else err}") from None


def _tool_specs(tools: Sequence[ToolLike] | None) -> list[ToolSpec]:
    out: list[ToolSpec] = []
    for i, t in enumerate(tools or ()):
        if isinstance(t, ToolSpec):
            out.append(t)
            continue
        try:
            data = dict(t)
            if data.get("type") == "function" and isinstance(data.get("function"), Mapping):
                data = dict(data["function"])
            out.append(ToolSpec.model_validate(data))
        except (ValidationError, TypeError, ValueError) as err:
            first = str(err).strip().splitlines()
            raise InvalidInput(f"tools[{i}] is not a tool spec: {first[-1] if first else err}") from None
    return out


def _template_message(m: Message) -> dict[str, Any]:
    """A message as chat templates expect it: OpenAI shape, call arguments as objects."""
    out = m.to_openai()
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": arguments_object(c.arguments)}}
            for c in m.tool_calls
        ]
    return out


def _control_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The tokenizer's special tokens (named and added), longest first."""
    found: set[str] = {t for t in tokenizer.all_special_tokens if t}
    for added in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(added, "special", False) and added.content:
            found.add(str(added.content))
    return sorted(found, key=lambda t: (-len(t), t))


def _template_uses(template: str, variable: str) -> bool:
    """Whether Jinja ``template`` reads ``variable`` (parsed; a word search if it does not parse)."""
    try:
        import jinja2
        from jinja2 import meta

        env = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"])
        return variable in meta.find_undeclared_variables(env.parse(template))
    except Exception:  # custom tags such as {% generation %}: fall back to a word search
        return re.search(rf"\b{re.escape(variable)}\b", template) is not None


__all__ = ["MessageLike", "Renderer", "ToolLike", "TrainOn"]
