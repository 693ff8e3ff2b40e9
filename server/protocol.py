"""Request and response bodies of the HTTP API, following the OpenAI API reference.

Requests reject what they do not declare (no field is silently dropped): an unknown field, a value of
the wrong type (strict: "yes" is not a bool, 1.5 not an int) or a declared but not yet implemented
field with a non-default value is a 400 naming it. The few fields in `IGNORED_FIELDS` are accepted
and ignored because ignoring them changes no output. Range checks are left to `SamplingParams`, whose
`ValueError("<field>: ...")` becomes a 400 naming that field.
Response models document the exact shapes sent (nulls included, as OpenAI sends them) and forbid
extra fields; the hot streaming path builds the same shapes as dicts, and the tests validate every
response and chunk against these models.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from server.validation import check_field

# Accepted and ignored: bookkeeping that changes no output (documented in README).
IGNORED_FIELDS = ("user", "metadata", "store", "service_tier", "safety_identifier",
                  "prompt_cache_key")


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class _Request(BaseModel):
    """Base of request bodies: unknown fields and wrong types are rejected, not dropped or coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _engine_safe(cls, value: Any) -> Any:
        """Finite floats, 64-bit ints, valid Unicode, in every field (server/validation.py)."""
        return check_field(value)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Request):
    include_usage: Optional[bool] = False
    continuous_usage_stats: Optional[bool] = False  # accepted (vLLM's); usage comes at the end

    @field_validator("continuous_usage_stats")
    @classmethod
    def _not_yet(cls, value: Any) -> Any:
        if value:
            raise PydanticCustomError("not_supported", "not supported yet")
        return value


class _IgnoredAndStructured(_Request):
    """The safe-to-ignore fields, and the output-constraint fields of both endpoints
    (server/structured_request.py: OpenAI's response_format, vLLM's structured_outputs extra and
    its older guided_* names)."""

    user: Optional[str] = None
    metadata: Optional[dict[str, str]] = None
    store: Optional[bool] = None
    service_tier: Optional[str] = None
    safety_identifier: Optional[str] = None
    prompt_cache_key: Optional[str] = None

    response_format: Optional[dict[str, Any]] = None
    structured_outputs: Optional[dict[str, Any]] = None
    guided_json: Optional[Union[str, dict[str, Any]]] = None
    guided_regex: Optional[str] = None
    guided_choice: Optional[list[str]] = None
    guided_grammar: Optional[str] = None


class _SamplingFields(_IgnoredAndStructured):
    """Sampling fields shared by both endpoints, OpenAI's plus vLLM's extras."""

    model: Optional[str] = None
    n: Optional[int] = 1
    best_of: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    presence_penalty: Optional[float] = 0.0
    frequency_penalty: Optional[float] = 0.0
    repetition_penalty: Optional[float] = None
    stop: Optional[Union[str, list[str]]] = None
    stop_token_ids: Optional[list[int]] = None
    seed: Optional[int] = None
    logit_bias: Optional[dict[str, float]] = None
    ignore_eos: Optional[bool] = False
    min_tokens: Optional[int] = 0
    use_beam_search: bool = False
    length_penalty: float = 1.0
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    prompt_logprobs: Optional[int] = None  # vLLM's extra: logprobs of every prompt token
    # Logprobs name tokens "token_id:<id>" (vLLM); unset: --return-tokens-as-token-ids.
    return_tokens_as_token_ids: Optional[bool] = None


class CompletionRequest(_SamplingFields):
    """POST /v1/completions."""

    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: Optional[int] = 16  # 0 only with echo: score the prompt, generate nothing
    echo: Optional[bool] = False
    logprobs: Optional[int] = None
    suffix: Optional[str] = None


class TextPart(_Request):
    type: Literal["text"] = "text"
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Optional[Union[str, list[TextPart]]] = None
    name: Optional[str] = None
    tool_calls: Optional[list[dict[str, Any]]] = None  # assistant messages that called tools
    tool_call_id: Optional[str] = None  # tool messages: the call they answer

    def text(self) -> str:
        """Content as one string; a list of text parts is joined with newlines (as vLLM does)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content)


class ChatCompletionRequest(_SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[int] = None
    max_completion_tokens: Optional[int] = None
    logprobs: Optional[bool] = False
    top_logprobs: Optional[int] = None
    add_generation_prompt: bool = True
    # Tool calling (server/tools/).
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Optional[Union[str, dict[str, Any]]] = None
    parallel_tool_calls: Optional[bool] = None
    continue_final_message: bool = False
    chat_template_kwargs: Optional[dict[str, Any]] = None


class TokenizeRequest(_Request):
    """POST /tokenize: either `prompt` or chat `messages`."""

    model: Optional[str] = None
    prompt: Optional[str] = None
    messages: Optional[list[ChatMessage]] = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: Optional[dict[str, Any]] = None


class DetokenizeRequest(_Request):
    model: Optional[str] = None
    tokens: list[int]


# ---------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------

class UsageInfo(_Response):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class CompletionLogprobs(_Response):
    """The legacy completions logprobs shape: parallel lists, one entry per token."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[Optional[float]] = Field(default_factory=list)
    top_logprobs: list[Optional[dict[str, float]]] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class PromptLogprob(_Response):
    """One entry of vLLM's `prompt_logprobs` (keyed by token id)."""

    logprob: float
    rank: Optional[int] = None
    decoded_token: Optional[str] = None


class CompletionChoice(_Response):
    index: int
    text: str
    logprobs: Optional[CompletionLogprobs] = None
    finish_reason: Optional[str] = None
    stop_reason: Union[int, str, None] = None
    prompt_logprobs: Optional[list[Optional[dict[str, PromptLogprob]]]] = None


class CompletionResponse(_Response):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Optional[UsageInfo] = None
    system_fingerprint: Optional[str] = None


class TopLogprob(_Response):
    token: str
    logprob: float
    bytes: Optional[list[int]] = None


class ChatTokenLogprob(_Response):
    token: str
    logprob: float
    bytes: Optional[list[int]] = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(_Response):
    content: Optional[list[ChatTokenLogprob]] = None


class FunctionCall(_Response):
    name: Optional[str] = None
    arguments: Optional[str] = None


class ToolCall(_Response):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class DeltaToolCall(_Response):
    """A streamed fragment: index, id, type and name come first, then arguments pieces."""

    index: int
    id: Optional[str] = None
    type: Optional[Literal["function"]] = None
    function: Optional[FunctionCall] = None


class AssistantMessage(_Response):
    role: str = "assistant"  # --response-role (or the continued message's role)
    content: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None


class ChatChoice(_Response):
    index: int
    message: AssistantMessage
    logprobs: Optional[ChatLogprobs] = None
    finish_reason: Optional[str] = None
    stop_reason: Union[int, str, None] = None


class ChatCompletionResponse(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    system_fingerprint: Optional[str] = None
    prompt_logprobs: Optional[list[Optional[dict[str, PromptLogprob]]]] = None


class DeltaMessage(_Response):
    role: Optional[str] = None
    content: Optional[str] = None
    tool_calls: Optional[list[DeltaToolCall]] = None


class ChatStreamChoice(_Response):
    index: int
    delta: DeltaMessage
    logprobs: Optional[ChatLogprobs] = None
    finish_reason: Optional[str] = None
    stop_reason: Union[int, str, None] = None


class ChatCompletionChunk(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatStreamChoice]
    usage: Optional[UsageInfo] = None
    system_fingerprint: Optional[str] = None


class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "pagedserve"
    root: Optional[str] = None
    max_model_len: Optional[int] = None


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeResponse(_Response):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeResponse(_Response):
    prompt: str


class ErrorInfo(_Response):
    message: str
    type: str
    param: Optional[str] = None
    code: Union[str, int, None] = None


class ErrorResponse(_Response):
    error: ErrorInfo


def dump(model: BaseModel) -> dict[str, Any]:
    """JSON-ready dict of a response model (nulls kept, as OpenAI sends them)."""
    return model.model_dump(mode="json")
