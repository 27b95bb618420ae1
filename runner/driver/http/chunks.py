"""The fields of a streamed chunk that the driver reads, decoded straight into typed structs.

A streamed request is about 65 events, each a JSON object of which the driver needs a few fields
(the choices' text, reasoning, tool calls and finish reason; usage; error). A general JSON parser
builds a dict and a string for every key of every event (id, model, created, logprobs, index ...);
msgspec's typed decoder skips what these structs do not name. Measured with
scripts/bench_read_path.py: 2.9 -> 2.1-2.4 µs per read, all of the driver's work on it included.

An event of another shape (choices that are not a list, a choice or delta that is not an object, not
an object at all, not JSON) fails to decode with `DecodeError`; the reader then takes its careful
path, which parses the event as plain JSON first to tell an error event from a broken one, and makes
the same structs of it with `as_chunk`.
"""

from __future__ import annotations

from typing import Any

import msgspec

# ValidationError (JSON of the wrong shape) is a DecodeError (not JSON) too.
DecodeError = msgspec.DecodeError


# gc=False: these hold only values decoded from JSON and are dropped within the read; never part of
# a reference cycle, so the collector need not track them.
class Delta(msgspec.Struct, gc=False):
    content: Any = None
    reasoning_content: Any = None  # vLLM renamed it `reasoning`; both are read
    reasoning: Any = None
    tool_calls: Any = None


class Choice(msgspec.Struct, gc=False):
    delta: Delta | None = None  # chat completions
    text: Any = None  # completions
    finish_reason: Any = None


class Chunk(msgspec.Struct, gc=False):
    choices: list[Choice] | None = None
    usage: Any = None
    error: Any = None  # only a truthy one: some servers send `"error": null` (or "") on every chunk
    object: Any = None


decode_chunk = msgspec.json.Decoder(Chunk).decode


def as_chunk(obj: dict[str, Any]) -> Chunk:
    """A chunk already parsed as plain JSON; raises DecodeError if its shape is not a chunk's."""
    return msgspec.convert(obj, Chunk)
