"""Request body of the Responses API (`POST /v1/responses`), stateless subset.

Strict like every request model (server/protocol.py): unknown fields and wrong types are 400s.
What is declared but not implemented here is refused by the handler with a 400 naming it:
stored state (`previous_response_id`, `store: true`), non-function `tools`, reasoning options
and `include`. `input` items are messages or one function-tool round trip (`function_call`,
`function_call_output`); the item's `type` picks its model (a message may leave it out).
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import Discriminator, Field, Tag
from typing_extensions import Annotated

from server.protocol import _Request


class InputText(_Request):
    """A text part of an input message (`output_text` for earlier assistant turns)."""

    type: Literal["input_text", "output_text"]
    text: str
    annotations: Optional[list[Any]] = None  # echoed back by clients from earlier outputs
    logprobs: Optional[list[Any]] = None


class InputMessage(_Request):
    type: Optional[Literal["message"]] = None
    role: Literal["user", "system", "developer", "assistant"]
    content: Union[str, list[InputText]]
    id: Optional[str] = None
    status: Optional[str] = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content)


class FunctionCallItem(_Request):
    """A function call the model made earlier (sent back with its output)."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: Optional[str] = None
    status: Optional[str] = None


class FunctionCallOutputItem(_Request):
    """The caller's result of the function call `call_id` (text)."""

    type: Literal["function_call_output"]
    call_id: str
    output: str
    id: Optional[str] = None
    status: Optional[str] = None


_ITEM_TAGS = {"function_call": "FunctionCallItem",
              "function_call_output": "FunctionCallOutputItem"}


def _item_tag(value: Any) -> str:
    """Which model validates an input item. Tags are the class names: error locations skip
    capitalised parts (server/errors.py), so a bad item field reads `input[0].call_id`; an
    unknown `type` goes to the message model, whose error names `input[i].type`."""
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    # any other value, unhashable ones ([], {}) included, is the message model's to reject
    return _ITEM_TAGS.get(kind, "InputMessage") if isinstance(kind, str) else "InputMessage"


InputItem = Annotated[Union[Annotated[InputMessage, Tag("InputMessage")],
                            Annotated[FunctionCallItem, Tag("FunctionCallItem")],
                            Annotated[FunctionCallOutputItem, Tag("FunctionCallOutputItem")]],
                      Discriminator(_item_tag)]


class ResponseRequest(_Request):
    """POST /v1/responses."""

    model: Optional[str] = None
    input: Union[str, list[InputItem]] = Field(min_length=1)
    instructions: Optional[str] = None
    max_output_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    stream: Optional[bool] = False
    text: Optional[dict[str, Any]] = None
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Optional[Union[str, dict[str, Any]]] = None
    parallel_tool_calls: Optional[bool] = None
    previous_response_id: Optional[str] = None
    store: Optional[bool] = None
    reasoning: Optional[dict[str, Any]] = None
    include: Optional[list[str]] = None
    truncation: Optional[Literal["disabled", "auto"]] = None
    background: Optional[bool] = None
    # Accepted and ignored, as on the other endpoints (server/protocol.py IGNORED_FIELDS).
    user: Optional[str] = None
    metadata: Optional[dict[str, str]] = None
    service_tier: Optional[str] = None
    safety_identifier: Optional[str] = None
    prompt_cache_key: Optional[str] = None
