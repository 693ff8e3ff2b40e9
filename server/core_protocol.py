"""Messages between the HTTP process (frontend) and the engine core loop.

Small msgspec structs, tagged so one msgpack decoder per direction reads any of them. The same
structs travel through a `queue.Queue` in in-process mode, unencoded.

Inputs (frontend -> core): AddRequest, AbortRequests, StopSeqs, GetStats, GetBlockMap, Shutdown.
Outputs (core -> frontend): Ready, OutputBatch, StatsReply, BlockMapReply, CoreFailed.
"""
from __future__ import annotations

from typing import Optional, Union

import msgspec

from engine.outputs import EngineCoreOutput, EngineCoreRequest


class AddRequest(msgspec.Struct, tag="add"):
    request: EngineCoreRequest


class AbortRequests(msgspec.Struct, tag="abort"):
    request_ids: list[str]


class StopSeqs(msgspec.Struct, tag="stop"):
    """The frontend found a stop string in these sequences (choice indices) of a request."""

    request_id: str
    indices: list[int]


class GetStats(msgspec.Struct, tag="get_stats"):
    token: int  # echoed in the StatsReply so the frontend can match it to its waiter


class GetBlockMap(msgspec.Struct, tag="get_block_map"):
    """Ask for a snapshot of the KV block pools (the dashboard; see engine/kv_snapshot.py)."""

    token: int


class Shutdown(msgspec.Struct, tag="shutdown"):
    pass


class Ready(msgspec.Struct, tag="ready"):
    """The core finished loading and entered its loop; what the frontend needs to validate
    requests (the pool size is only known once the runner has sized the KV cache)."""

    stats: dict
    vocab_size: int
    num_gpu_blocks: int
    block_size: int


class OutputBatch(msgspec.Struct, tag="outputs"):
    """Outputs of one step (possibly none) and the core's stats right after it. Sent only when
    something changed, so an engine that cannot progress sends nothing (bounded traffic).

    `first_scheduled` maps request ids to the wall time their first tokens were scheduled, for
    requests scheduled for the first time since the previous batch (queue-time metric).
    """

    outputs: list[EngineCoreOutput]
    stats: Optional[dict] = None
    first_scheduled: Optional[dict[str, float]] = None
    # The core will now block on its inbox: it has no work, or its last step could not make
    # progress (the step-timeout watchdog must not count this silence against it).
    idle: bool = False


class StatsReply(msgspec.Struct, tag="stats"):
    token: int
    stats: dict


class BlockMapReply(msgspec.Struct, tag="block_map"):
    token: int
    block_map: dict


class CoreFailed(msgspec.Struct, tag="failed"):
    """The core hit an unrecoverable error (start-up or step); it exits after sending this."""

    message: str


InputMsg = Union[AddRequest, AbortRequests, StopSeqs, GetStats, GetBlockMap, Shutdown]
OutputMsg = Union[Ready, OutputBatch, StatsReply, BlockMapReply, CoreFailed]

_encoder = msgspec.msgpack.Encoder()
_input_decoder = msgspec.msgpack.Decoder(InputMsg)
_output_decoder = msgspec.msgpack.Decoder(OutputMsg)


def encode(msg: InputMsg | OutputMsg) -> bytes:
    return _encoder.encode(msg)


def decode_input(data: bytes) -> InputMsg:
    return _input_decoder.decode(data)


def decode_output(data: bytes) -> OutputMsg:
    return _output_decoder.decode(data)
