"""Chat messages to a prompt string through the tokenizer's (or a user's) chat template."""
from __future__ import annotations

from typing import Any, Optional


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Validate OpenAI-style messages; content given as a list of text parts is joined."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages: must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise ValueError(f"messages[{i}]: each message needs a 'role'")
        content = m.get("content")
        if content is None:
            content = ""
        elif isinstance(content, list):
            texts = []
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text":
                    texts.append(str(part.get("text", "")))
                elif isinstance(part, str):
                    texts.append(part)
                else:
                    raise ValueError(f"messages[{i}].content: only text parts are supported")
            content = "\n".join(texts)
        elif not isinstance(content, str):
            raise ValueError(f"messages[{i}].content: must be a string or a list of text parts")
        out.append({**{k: v for k, v in m.items() if k != "content"}, "content": content})
    return out


_RESERVED_KWARGS = ("conversation", "messages", "chat_template", "tokenize",
                    "add_generation_prompt", "continue_final_message", "tools", "documents",
                    "return_dict", "return_tensors", "padding", "truncation", "max_length")


def apply_chat_template(tokenizer, messages: list[dict[str, Any]],
                        chat_template: Optional[str] = None,
                        add_generation_prompt: bool = True,
                        tools: Optional[list[dict[str, Any]]] = None,
                        continue_final_message: bool = False,
                        chat_template_kwargs: Optional[dict[str, Any]] = None) -> str:
    """Render `messages` into a prompt (with `tools` for templates that show them). Raises
    ValueError ("<field>: ...") when no template is available or the options do not fit together.

    `continue_final_message` leaves the last (assistant) message open, so the model continues it;
    `chat_template_kwargs` become extra variables of the template (e.g. enable_thinking).
    """
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise ValueError("This model has no chat template: the tokenizer defines none. Pass one "
                         "with --chat-template FILE (or chat_template=...) to use chat.")
    if continue_final_message and add_generation_prompt:
        raise ValueError("continue_final_message: cannot be combined with "
                         "add_generation_prompt=true (set it to false)")
    if continue_final_message and (not messages or messages[-1].get("role") != "assistant"):
        raise ValueError("continue_final_message: the last message must be an assistant message")
    extra = dict(chat_template_kwargs or {})
    clash = [k for k in extra if k in _RESERVED_KWARGS]
    if clash:
        raise ValueError(f"chat_template_kwargs: {clash[0]!r} is set by the request itself, not "
                         "a template variable")
    text = tokenizer.apply_chat_template(normalize_messages(messages), chat_template=template,
                                         tokenize=False,
                                         add_generation_prompt=add_generation_prompt,
                                         continue_final_message=continue_final_message,
                                         **({"tools": tools} if tools else {}), **extra)
    if not isinstance(text, str):  # a template kwarg asked for another return shape
        raise ValueError("chat_template_kwargs: the template must render to text")
    return text
