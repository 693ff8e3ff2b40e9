"""The output items of one /v1/responses answer, and the stream events that announce them.

Chat's tool streamer (server/tool_stream.py) turns the generated text into chat delta pieces:
`{"content"}`, a tool call's header (`id`, name) and its argument fragments. This file turns the
same pieces into Responses output items: text becomes an assistant `message` with one
`output_text` part, each call a `function_call` item (`call_id`, `name`, `arguments`). An item
is opened (response.output_item.added), written (output_text.delta /
function_call_arguments.delta) and closed (the .done events, response.output_item.done) in
order; the non-streamed answer is the same items with the events dropped.
"""
from __future__ import annotations

import uuid
from typing import Any, Optional

from server.tool_calling import ToolPlan
from server.tool_stream import ToolCallStreamer

Event = tuple[str, dict[str, Any]]  # (event type, its fields besides type / sequence_number)


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [] if status == "in_progress" else [text_part(text)]
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": content}


class ResponseOutput:
    def __init__(self, plan: Optional[ToolPlan]):
        self.streamer = ToolCallStreamer(plan if plan is not None else ToolPlan("none", []))
        self.items: list[dict[str, Any]] = []  # closed items
        self.open: Optional[dict[str, Any]] = None  # the item being written
        self.text = ""  # the open message's text so far

    def feed(self, new_text: str, finished: bool) -> list[Event]:
        """Events for this piece of the generated text (`finished`: it is the last piece)."""
        events: list[Event] = []
        for piece in self.streamer.delta(new_text, finished):
            if piece.get("content"):
                events += self._write_text(piece["content"])
            for call in piece.get("tool_calls") or []:
                fn = call["function"]
                if "id" in call:
                    events += self._close("completed")
                    events += self._open({"type": "function_call", "id": f"fc_{uuid.uuid4().hex}",
                                          "call_id": call["id"], "name": fn["name"],
                                          "arguments": "", "status": "in_progress"})
                elif fn.get("arguments"):
                    self.open["arguments"] += fn["arguments"]
                    events.append(("response.function_call_arguments.delta",
                                   {**self._where(), "delta": fn["arguments"]}))
        return events

    def finish(self, finish_reason: Optional[str]) -> list[Event]:
        """Close the last item: `incomplete` when the output ran out of tokens."""
        events: list[Event] = []
        if self.open is None and not self.items:  # an empty answer is still one message
            events += self._write_text("")
        return events + self._close("incomplete" if finish_reason == "length" else "completed")

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.open["id"], "output_index": len(self.items)}

    def _open(self, item: dict[str, Any]) -> list[Event]:
        self.open = item
        events = [("response.output_item.added", {"output_index": len(self.items),
                                                   "item": dict(item)})]
        if item["type"] == "message":
            self.text = ""
            events.append(("response.content_part.added",
                           {**self._where(), "content_index": 0, "part": text_part("")}))
        return events

    def _write_text(self, text: str) -> list[Event]:
        events: list[Event] = []
        if self.open is None or self.open["type"] != "message":
            events += self._close("completed")
            events += self._open(message_item(f"msg_{uuid.uuid4().hex}", "", "in_progress"))
        self.text += text
        if text:
            events.append(("response.output_text.delta",
                           {**self._where(), "content_index": 0, "delta": text, "logprobs": []}))
        return events

    def _close(self, status: str) -> list[Event]:
        item = self.open
        if item is None:
            return []
        where = self._where()
        if item["type"] == "message":
            item = message_item(item["id"], self.text, status)
            part = {**where, "content_index": 0}
            events = [("response.output_text.done", {**part, "text": self.text, "logprobs": []}),
                      ("response.content_part.done", {**part, "part": text_part(self.text)})]
        else:
            item = {**item, "status": status}
            events = [("response.function_call_arguments.done",
                       {**where, "arguments": item["arguments"]})]
        events.append(("response.output_item.done", {"output_index": len(self.items),
                                                      "item": item}))
        self.items.append(item)
        self.open = None
        return events
