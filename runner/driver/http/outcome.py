"""What one request came to: the client fills an Outcome, the driver turns it into a record.

Its own module so that the response reader (openai.py), which fills it, and the client, which returns
it, both import it from below.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from veeksha.shared.records import SUCCESS


@dataclass(slots=True)
class Outcome:
    status: str = SUCCESS  # veeksha.shared.records SUCCESS / ERROR / TIMEOUT / CANCELLED
    error_type: str | None = None  # one of veeksha.shared.records.ERROR_TYPES
    error_message: str | None = None  # one line, no stack trace, secrets never included
    http_status: int | None = None
    picked_up_at: float | None = None  # perf_counter() when `request` started (before connecting)
    # perf_counter() at `[DONE]`, else at the end of the body, else at the failure
    completed_at: float | None = None
    # perf_counter() of each chunk with output (answer, reasoning or tool call); one, for non-streaming
    chunk_times: list[float] = field(default_factory=list)
    # perf_counter() of each chunk with answer output (content or a tool call): chunk_times less the
    # reasoning-only chunks
    answer_times: list[float] = field(default_factory=list)
    text: str = ""  # generated content concatenated (used for multi-turn history)
    reasoning_text: str = ""  # reasoning deltas concatenated (counted when usage has no count)
    reasoning_tokens: int | None = None  # usage.completion_tokens_details.reasoning_tokens
    prompt_tokens: int | None = None  # from usage when the server sent it
    completion_tokens: int | None = None
    finish_reason: str | None = None
