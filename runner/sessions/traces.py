"""Sessions replayed from a local trace file (`session_generator: {type: trace}`).

Two flavors, detected from the first record unless `flavor:` says:

- request log: one request per record, `input_length` and `output_length` (tokens) and an optional
  `timestamp` (seconds, or an ISO date-time). Azure-trace column names `ContextTokens`,
  `GeneratedTokens`, `TIMESTAMP` are accepted too. A date-time without an offset is UTC. Lengths
  are at most 10,000,000 tokens. (Mooncake traces use these names with milliseconds: replay them with
  `time_scale: 1000`.) Prompts are synthetic word text of the recorded length, drawn fresh for
  every session (a wrapped trace does not repeat prompts).
- conversation: ShareGPT-style `{"conversations": [{"from": "human"|"gpt", "value": ...}]}` or
  `{"messages": [{"role": "user"|"assistant", "content": ...}]}`. Each record is a linear session
  whose user turns are the recorded human messages, each continuing the previous turn's history;
  the requested output length of a turn is the length of the recorded reply. System messages are
  dropped, consecutive messages of one side are merged, a last user turn without reply is dropped,
  and records with no user/reply pair (ShareGPT has empty ones) are skipped. Without a tokenizer,
  turns are counted by the approximation (tokenizer.py: one token per CJK character, about one per
  word of English). A user message or reply of more than 10,000,000 tokens is refused, as in a
  request log.

Timed replay sends each record at (its timestamp - the first one's) / time_scale after the start; an
offset (and, with wrap, the period of one pass) must be finite and at most a week, so a trace in
milliseconds replayed as seconds, or a time_scale of 1e-310, is a config error, not a run that never
sends anything. A shorter replay that benchmark_timeout cuts off is announced (`records_due_within`).

Files: `.csv` is CSV with a header row; otherwise a JSON array of records or JSON lines. The whole
file is read and checked when the generator is made, so a bad record stops the run before any
traffic. CSV and JSON lines are parsed record by record as read (every driver process loads the
trace, and the raw records are not kept); a JSON array is parsed whole first, about 3x its size at
its peak, so JSON lines suit large traces better. A trace is never fetched from the network.
"""

from __future__ import annotations

import csv
import math
import random
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from veeksha.runner.sessions.lengths import MAX_TOKENS
from veeksha.runner.sessions.model import RequestNode, Session
from veeksha.runner.sessions.prompts import PromptBuilder
from veeksha.runner.sessions.randomness import stream
from veeksha.runner.sessions.tokenizer import LocalTokenizer
from veeksha.shared.config import MAX_SECONDS, TraceSessions
from veeksha.shared.errors import ConfigError
from veeksha.shared.userpath import expand_home

REQUEST_LOG = "request_log"
CONVERSATION = "conversation"

_INPUT_KEYS = ("input_length", "ContextTokens")
_OUTPUT_KEYS = ("output_length", "GeneratedTokens")
_TIME_KEYS = ("timestamp", "TIMESTAMP")
_USER_ROLES = frozenset({"human", "user"})
_ASSISTANT_ROLES = frozenset({"gpt", "assistant", "chatgpt", "bard", "bing", "model", "bot"})


@dataclass(slots=True, frozen=True)
class LoggedRequest:
    input_length: int
    output_length: int
    timestamp: float | None


@dataclass(slots=True, frozen=True)
class Conversation:
    turns: tuple[tuple[str, str], ...]  # (user message, recorded reply)
    timestamp: float | None


TraceRecord = LoggedRequest | Conversation


class TraceSessionGenerator:
    """Sessions from a trace file, in file order (timestamp order for timed replay)."""

    def __init__(self, ts: TraceSessions, seed: int, tokenizer: LocalTokenizer | None) -> None:
        self.path = _local_path(ts.path)
        self.flavor, self.records, self._places, self.skipped_records = _load(self.path, ts.flavor)
        self._timed = ts.timed_replay
        self._scale = ts.time_scale
        self._period = 0.0
        self._t0 = 0.0
        self._wrap = ts.wrap
        if self._timed:
            self._prepare_timed()
        self._prompts = PromptBuilder(tokenizer, [stream(seed, "trace/shared_prefix")])
        if self.flavor == CONVERSATION:
            self._check_turn_lengths()
        # Each session's words come from its own stream (seeded by the session id), so a driver can
        # pass over another driver's sessions without drawing their words.
        self._words_base = stream(seed, "trace/words").getrandbits(64)
        self._words = random.Random()
        self.token_count_source = self._prompts.token_count_source
        self._index = 0
        self._cycle = 0
        self._next_id = 0

    def _where(self, i: int) -> str:
        """Where the i-th kept record is in the file, for messages ('line N' or 'record N')."""
        return self._places.where(i)

    def _prepare_timed(self) -> None:
        for i, rec in enumerate(self.records):
            where = self._where(i)
            if rec.timestamp is not None and not math.isfinite(rec.timestamp):  # `nan`: a CSV's "missing"
                raise ConfigError(
                    f"{self.path} {where}: 'timestamp' must be finite seconds for timed_replay, "
                    f"got {rec.timestamp}"
                )
            if rec.timestamp is None:
                raise ConfigError(
                    f"{self.path} {where}: timed_replay needs a 'timestamp' in every record; "
                    "set session_generator.timed_replay: false to replay at the traffic scheduler's pace"
                )
        # Every timestamp is set (checked above); a stable sort keeps file order among equal ones.
        order = sorted(range(len(self.records)), key=lambda i: self.records[i].timestamp or 0.0)
        self.records = [self.records[i] for i in order]
        self._places = self._places.reordered(order)
        first, last = self.records[0].timestamp, self.records[-1].timestamp
        assert first is not None and last is not None
        n = len(self.records)
        if self._wrap and last == first:
            raise ConfigError(
                f"{self.path}: timed_replay with wrap: true needs timestamps spanning some time "
                "(every record has the same one, so the replay would be one endless burst); "
                "set session_generator.wrap: false"
            )
        self._t0 = first
        self._check_offsets()
        # A wrapped trace starts over one average gap after its last record.
        self._period = (last - first) * n / (n - 1) if n > 1 else 0.0
        if self._wrap:
            self._check_period()

    def _check_offsets(self) -> None:
        """Every arrival offset finite and at most a week. Timestamps 1e308 apart overflow to inf and
        a time_scale of 1e-310 divides to inf: the driver never sent such a session, and the run
        ended with nothing sent; a trace in milliseconds replayed as seconds would wait for weeks."""
        for i, rec in enumerate(self.records):
            assert rec.timestamp is not None  # timed replay: checked by _prepare_timed
            offset = (rec.timestamp - self._t0) / self._scale
            if math.isfinite(offset) and offset <= MAX_SECONDS:
                continue
            what = "is not finite" if not math.isfinite(offset) else "is more than a week"
            raise ConfigError(
                f"{self.path} {self._where(i)}: timed_replay offset {offset:.6g} s after the first record "
                f"(timestamp {rec.timestamp:.6g} - {self._t0:.6g}, at time_scale {self._scale:.6g}) {what}; "
                f"offsets must be at most a week ({MAX_SECONDS} s): check the timestamps' unit "
                "(milliseconds need time_scale: 1000) and time_scale"
            )

    def _check_period(self) -> None:
        """A wrapped replay's pass (its span plus one average gap) finite and at most a week."""
        period = self._period / self._scale
        if math.isfinite(period) and period <= MAX_SECONDS:
            return
        raise ConfigError(
            f"{self.path}: timed_replay with wrap: true starts the trace over every {period:.6g} s "
            f"(its span and one average gap, at time_scale {self._scale:.6g}), more than a week "
            f"({MAX_SECONDS} s); set session_generator.wrap: false, or a larger time_scale"
        )

    def records_due_within(self, seconds: float) -> int | None:
        """How many records of one pass timed replay sends in the first `seconds` (None when not
        timed): a trace in milliseconds replayed as seconds sends a handful before benchmark_timeout."""
        if not self._timed:
            return None
        limit = seconds * self._scale + self._t0
        return sum(1 for rec in self.records if rec.timestamp is not None and rec.timestamp <= limit)

    def _check_turn_lengths(self) -> None:
        """The request logs' cap on each turn: a longer user message is no prompt to send, a longer
        reply no output length to ask for (a 20M-word reply was requested as it was)."""
        for k, rec in enumerate(self.records):
            assert isinstance(rec, Conversation)
            for i, (user, reply) in enumerate(rec.turns, 1):
                for what, text in (("user message", user), ("reply", reply)):
                    self._check_turn_length(k, f"the {what} of turn {i}", text)

    def _check_turn_length(self, k: int, what: str, text: str) -> None:
        # A token is at least one byte of UTF-8 (the approximation: at least one character), and a
        # character at most 4 bytes: shorter texts are under the cap without being counted, which
        # would take minutes with a tokenizer on all of ShareGPT.
        if len(text) * 4 <= MAX_TOKENS:
            return
        tokens = self._prompts.count(text)
        if tokens > MAX_TOKENS:
            raise ConfigError(
                f"{self.path} {self._where(k)}: {what} is {tokens:,} tokens, more than {MAX_TOKENS:,} tokens"
            )

    def next_session(self, build: bool = True) -> Session | None:
        """The next session; with `build` false a placeholder (its id and arrival offset, no nodes)."""
        if self._index == len(self.records):
            if not self._wrap:
                return None
            self._index = 0
            self._cycle += 1
        rec = self.records[self._index]
        self._index += 1
        nodes: list[RequestNode] = []
        if build:
            self._words.seed(self._words_base + self._next_id)
            nodes = self._request_nodes(rec) if isinstance(rec, LoggedRequest) else self._turn_nodes(rec)
        offset = None
        if self._timed and rec.timestamp is not None:
            offset = (rec.timestamp - self._t0 + self._cycle * self._period) / self._scale
        session = Session(self._next_id, nodes, offset)
        self._next_id += 1
        return session

    def _request_nodes(self, rec: LoggedRequest) -> list[RequestNode]:
        content, count = self._prompts.build(rec.input_length, self._words)
        return [RequestNode(0, (), None, 0.0, content, rec.input_length, count, rec.output_length)]

    def _turn_nodes(self, rec: Conversation) -> list[RequestNode]:
        nodes = []
        for i, (user, reply) in enumerate(rec.turns):
            count = self._prompts.count(user)
            parents, history = ((i - 1,), i - 1) if i else ((), None)
            output = max(1, self._prompts.count(reply))
            nodes.append(RequestNode(i, parents, history, 0.0, user, count, count, output))
        return nodes


# ---------------------------------------------------------------- reading


def _local_path(path: str) -> Path:
    if "://" in path:
        raise ConfigError(
            f"session_generator.path: {path!r} is a URL; traces are read from local files only "
            "(download it yourself and give the file path)"
        )
    p = expand_home(path, "config error at session_generator.path", ConfigError)
    if p.is_dir():  # `traces`: the config can tell a directory by its text only when it ends in /
        raise ConfigError(
            f"session_generator.path: {path!r} is a directory; give the trace file in it (.jsonl or .csv)"
        )
    if not p.is_file():
        raise ConfigError(f"session_generator.path: trace file {path!r} does not exist")
    return p


@dataclass(slots=True)
class _Places:
    """Where each kept record was in the file ('line N' / 'record N'), as one integer each: a string
    per record of a million-line trace would outweigh the records themselves."""

    unit: str
    numbers: array[int]

    def where(self, i: int) -> str:
        return f"{self.unit} {self.numbers[i]}"

    def reordered(self, order: list[int]) -> _Places:
        return _Places(self.unit, array("q", (self.numbers[i] for i in order)))


def _load(path: Path, flavor: str) -> tuple[str, list[TraceRecord], _Places, int]:
    """(flavor, kept records, their places, how many were skipped), parsing each raw record as it is
    read, so the file's raw objects are never all held at once beside the parsed ones."""
    unit, raw = _read_raw(path)
    records: list[TraceRecord] = []
    places = _Places(unit, array("q"))
    parse = None
    seen = 0
    for number, rec in raw:
        where = f"{unit} {number}"
        if parse is None:
            flavor = flavor if flavor != "auto" else _detect_flavor(path, where, rec)
            parse = _parse_request if flavor == REQUEST_LOG else _parse_conversation
        seen += 1
        parsed = parse(path, where, rec)
        if parsed is not None:
            records.append(parsed)
            places.numbers.append(number)
    if not seen:
        raise ConfigError(f"session_generator.path: trace {path} has no records")
    if not records:
        raise ConfigError(f"{path}: no conversation has a user message followed by a reply")
    return flavor, records, places, seen - len(records)


_BOM = b"\xef\xbb\xbf"  # a byte-order mark is no JSON


def _read_raw(path: Path) -> tuple[str, Iterator[tuple[int, Any]]]:
    """The unit records are counted in ('line' for CSV and JSON lines, 'record' in a JSON array) and
    (number, raw record) pairs, read as they are consumed."""
    if path.suffix.lower() == ".csv":
        return "line", _read_csv(path)
    if _first_byte(path) == b"[":
        return "record", _read_array(path)
    return "line", _read_lines(path)


def _cannot_read(path: Path, e: Exception) -> ConfigError:
    return ConfigError(f"session_generator.path: cannot read trace {path}: {e}")


def _first_byte(path: Path) -> bytes:
    """The file's first byte that is not a byte-order mark or whitespace (b'' for none)."""
    try:
        with path.open("rb") as f:
            head = f.read(len(_BOM)).removeprefix(_BOM)
            while True:
                head = head.lstrip()
                if head:
                    return head[:1]
                head = f.read(65536)
                if not head:
                    return b""
    except OSError as e:
        raise _cannot_read(path, e) from None


def _read_array(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        data = path.read_bytes().removeprefix(_BOM)
    except OSError as e:
        raise _cannot_read(path, e) from None
    try:
        records = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON: {e}") from None
    del data
    for i in range(len(records)):
        rec, records[i] = records[i], None  # let each raw record go once it is parsed
        yield i + 1, rec


def _read_lines(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        with path.open("rb") as f:
            for lineno, line in enumerate(f, 1):
                if lineno == 1:
                    line = line.removeprefix(_BOM)
                if not line.strip():
                    continue
                try:
                    rec = orjson.loads(line)
                except orjson.JSONDecodeError as e:
                    raise ConfigError(f"{path} line {lineno}: invalid JSON: {e}") from None
                yield lineno, rec
    except OSError as e:
        raise _cannot_read(path, e) from None


def _read_csv(path: Path) -> Iterator[tuple[int, Any]]:
    # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark, which would join the first name.
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames:  # `input_length, output_length`: names as meant, not as spaced
                reader.fieldnames = [name.strip() for name in reader.fieldnames]
            for row in reader:
                yield reader.line_num, row
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise _cannot_read(path, e) from None


def _detect_flavor(path: Path, where: str, rec: Any) -> str:
    if isinstance(rec, dict):
        if "conversations" in rec or "messages" in rec:
            return CONVERSATION
        if any(k in rec for k in _INPUT_KEYS):
            return REQUEST_LOG
    raise ConfigError(
        f"{path} {where}: cannot tell the trace flavor: expected 'input_length' and 'output_length' "
        "(request log) or 'conversations' / 'messages' (conversation)"
    )


def _field(rec: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = rec.get(key)
        if value not in (None, ""):
            return value
    return None


def _parse_request(path: Path, where: str, rec: Any) -> LoggedRequest:
    if not isinstance(rec, dict):
        raise ConfigError(f"{path} {where}: expected an object with input_length and output_length")
    lengths = []
    for keys in (_INPUT_KEYS, _OUTPUT_KEYS):
        value = _field(rec, keys)
        if value is None:
            raise ConfigError(f"{path} {where}: missing required field '{keys[0]}'")
        lengths.append(_token_count(path, where, keys[0], value))
    return LoggedRequest(max(1, lengths[0]), max(1, lengths[1]), _timestamp(path, where, rec))


def _token_count(path: Path, where: str, key: str, value: Any) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not number.is_integer() or number < 0:
        raise ConfigError(f"{path} {where}: '{key}' must be a non-negative integer, got {value!r}")
    if number > MAX_TOKENS:
        raise ConfigError(f"{path} {where}: '{key}' is {value!r}, more than {MAX_TOKENS:,} tokens")
    return int(number)


def _timestamp(path: Path, where: str, rec: dict[str, Any]) -> float | None:
    value = _field(rec, _TIME_KEYS)
    if value is None:
        return None
    seconds = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value)
        except ValueError:
            seconds = _iso_seconds(value)
    if seconds is None:
        raise ConfigError(f"{path} {where}: 'timestamp' must be seconds or an ISO date-time, got {value!r}")
    return seconds


def _iso_seconds(text: str) -> float | None:
    """An ISO date-time in seconds; one without an offset is UTC (never the load machine's zone, which
    would make the schedule depend on where it runs, and shift across a daylight-saving change)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _parse_conversation(path: Path, where: str, rec: Any) -> Conversation | None:
    """The record's (user, reply) turns; None when it has none (the record is skipped)."""
    messages = rec.get("conversations", rec.get("messages")) if isinstance(rec, dict) else None
    if not isinstance(messages, list):
        raise ConfigError(f"{path} {where}: expected 'conversations' or 'messages' holding a list")
    turns: list[tuple[str, str]] = []
    user: list[str] = []
    reply: list[str] = []
    for i, msg in enumerate(messages):
        role, text = _message(path, where, i, msg)
        if role in _USER_ROLES:
            if reply and user:
                turns.append(("\n\n".join(user), "\n\n".join(reply)))
                user, reply = [], []
            user.append(text)
        elif role in _ASSISTANT_ROLES and user:
            reply.append(text)
    if reply and user:
        turns.append(("\n\n".join(user), "\n\n".join(reply)))
    turns = [t for t in turns if t[0].strip()]
    return Conversation(tuple(turns), _timestamp(path, where, rec)) if turns else None


def _message(path: Path, where: str, i: int, msg: Any) -> tuple[str, str]:
    if isinstance(msg, dict):
        role = msg.get("from", msg.get("role"))
        text = msg.get("value", msg.get("content"))
        if text is None and ("value" in msg or "content" in msg):  # `content: null`: tool calls only
            text = ""
        elif isinstance(text, list):  # OpenAI content parts: keep the text ones
            text = "\n".join(t for p in text if isinstance(p, dict) and isinstance(t := p.get("text"), str))
        if isinstance(role, str) and isinstance(text, str):
            return role.lower(), text
    raise ConfigError(
        f"{path} {where}: message {i} needs 'from' and 'value' (ShareGPT) or 'role' and 'content'"
    )
