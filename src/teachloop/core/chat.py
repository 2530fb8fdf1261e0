"""Chat messages, tool specs and tool calls: the OpenAI chat shape, validated.

These are the messages every layer exchanges: the renderer turns them into
token ids, environments converse in them, the API accepts and returns them, and
datasets store them. ``content`` is always a string (multi-part content is
flattened to text by the API layer before it reaches here).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant", "tool"]


class ToolCall(BaseModel):
    """A function call the assistant asked for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="Call id, echoed by the tool message that answers it.")
    name: str = Field(min_length=1, description="Function name, one of the offered tools.")
    arguments: str = Field(default="{}", description="JSON-encoded arguments object, as the model wrote it.")


class Message(BaseModel):
    """One chat message."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role = Field(description="Who speaks: system, user, assistant or tool.")
    content: str = Field(default="", description="The text of the message (may be empty for pure tool calls).")
    tool_calls: tuple[ToolCall, ...] = Field(default=(), description="Calls made by an assistant message.")
    tool_call_id: str | None = Field(default=None, description="For a tool message: the call it answers.")
    name: str | None = Field(default=None, description="Optional speaker or tool name.")

    def to_openai(self) -> dict[str, Any]:
        """The message as an OpenAI chat-completions message dict."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out


class ToolSpec(BaseModel):
    """A function the model may call (OpenAI ``tools[].function``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, description="Function name.")
    description: str = Field(default="", description="What the function does, shown to the model.")
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="JSON schema of the arguments object.",
    )

    def to_openai(self) -> dict[str, Any]:
        """The spec as an OpenAI ``tools`` entry."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


__all__ = ["Message", "Role", "ToolCall", "ToolSpec"]
