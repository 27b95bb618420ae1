"""Prompt text of an exact target token count.

Prompts are random sequences of common English words joined by single spaces. Every word in
`WORDS` is one token (with or without a leading space) in the common BPE vocabularies, so without a
tokenizer `count_tokens_approx(text)` equals the target exactly and a real tokenizer agrees closely.
With a configured tokenizer the words it does not keep as one token are dropped once at start, and
one encode of a text holding every ordered pair of the kept words proves that no two neighbours
merge; prompts of those words then have exactly one token per word without encoding each prompt
(encoding costs ~1-2 µs per token, too slow to repeat for every request). A tokenizer that fails the
proof gets every prompt encoded and, where needed, trimmed by token slices until the count matches.

Each prompt draws its words from the caller's random stream, so prompts differ across sessions and a
server's prefix cache cannot make them free, except the run's shared prefix (one word sequence per
run) that `shared_prefix_tokens` asks for.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from veeksha.runner.sessions.tokenizer import LocalTokenizer, count_tokens_approx
from veeksha.shared.errors import ConfigError
from veeksha.shared.records import COUNT_APPROXIMATE, COUNT_TOKENIZER

# Frequent English words; single tokens in GPT-2/cl100k/o200k/Llama-3 and Llama-2/Mistral vocabularies.
WORDS: tuple[str, ...] = tuple(
    """
    time people year way day man thing woman life child world school state family group country
    problem hand part place case week company system program question work number night point home
    water room mother area money story fact month lot right study book eye job word business issue
    side kind head house service friend father power hour game line end member law car city name team
    minute idea body information back parent face level office door health person art war history
    party result change morning reason research girl moment air force education make go see know take
    get give find think tell become show leave feel put bring begin keep hold write stand hear let
    mean set meet run pay sit speak read grow lose fall send build stay play move live believe happen
    good new first last long great little own other old big high different small large next early
    young important few public bad same able best better real sure free full clear open whole light
    land sea sun tree road food table music market paper field river heart voice color report plan
    """.split()
)

# A tokenizer keeping fewer single-token words than this uses the slower trimming path instead.
MIN_WORDS = 32
# Shared prefix words are drawn in blocks of this many so the sequence never depends on call order.
_SHARED_BLOCK = 512
# Fresh word draws tried when trimming one text cannot reach the exact target.
_RETRIES = 4


def single_token_words(tokenizer: LocalTokenizer, words: tuple[str, ...] = WORDS) -> list[str]:
    """The words `tokenizer` encodes as one token at the start of a text and after a space."""
    return [w for w in words if len(probe_encode(tokenizer, f"{w} {w}")) == 2]


def probe_encode(tokenizer: LocalTokenizer, text: str) -> list[int]:
    """`tokenizer.encode(text)` for the checks made before a run starts.

    A tokenizer.json can load and still fail to encode (a WordLevel model whose unk_token is not in
    its vocabulary fails on the first unknown word), and the tokenizers library raises plain
    Exception: a config error here, not a traceback. Per-request encodes stay unwrapped (hot path).
    """
    try:
        return tokenizer.encode(text)
    except Exception as e:
        shown = repr(text) if len(text) <= 40 else f"{text[:40]!r}..."
        reason = " ".join(str(e).split())  # the error stays one line
        raise ConfigError(
            f"config error at client.tokenizer: {tokenizer.path} cannot encode text ({shown}): {reason}; "
            "give a tokenizer that can"
        ) from None


def all_pairs_text(words: Sequence[str]) -> str:
    """A text in which every ordered pair of `words` (a word twice too) appears side by side.

    A de Bruijn sequence of order 2: the Lyndon words a, ab (a < b) in lexicographic order, then
    the first word again to close the cycle; n*n + 1 words in all.
    """
    seq: list[str] = []
    for i, a in enumerate(words):
        seq.append(a)
        for b in words[i + 1 :]:
            seq += (a, b)
    seq.append(words[0])
    return " ".join(seq)


def one_token_per_word(tokenizer: LocalTokenizer, words: Sequence[str]) -> bool:
    """True when any space-joined text of `words` has exactly one token per word.

    Each word is one token on its own; one encode of every adjacent pair shows that no neighbours
    merge or split each other (tokenizers merge only within whitespace pieces or, without a
    pre-tokenizer, across a boundary between two neighbours).
    """
    text = all_pairs_text(words)
    return len(probe_encode(tokenizer, text)) == len(text.split())


class _SharedPrefix:
    """One shared word sequence of the run, drawn block by block from its own stream."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.words: list[str] = []
        self.ids: list[int] = []  # trimming path only: tokens of the word sequence
        self.texts: dict[int, str] = {}


class PromptBuilder:
    """Builds prompt texts of an exact token count, counted by `tokenizer` or the approximation."""

    def __init__(self, tokenizer: LocalTokenizer | None, shared_rngs: list[random.Random]) -> None:
        """`shared_rngs`: one random stream per shared prefix of the run's pool (usually one)."""
        self._tok = tokenizer
        self._pool = [_SharedPrefix(rng) for rng in shared_rngs]
        if tokenizer is None:
            self.words: tuple[str, ...] = WORDS
            self._one_token_words = True
            self._proven = True  # the approximation counts each of WORDS as one token
            self.token_count_source = COUNT_APPROXIMATE
        else:
            kept = single_token_words(tokenizer)
            self._one_token_words = len(kept) >= MIN_WORDS
            self.words = tuple(kept) if self._one_token_words else WORDS
            self._proven = self._one_token_words and one_token_per_word(tokenizer, kept)
            self.token_count_source = COUNT_TOKENIZER

    def count(self, text: str) -> int:
        """Tokens of a text not built here (a recorded conversation's turn)."""
        return self._tok.count(text) if self._tok is not None else count_tokens_approx(text)

    def build(
        self, target: int, rng: random.Random, shared_prefix_tokens: int = 0, pool_index: int = 0
    ) -> tuple[str, int]:
        """(text, its token count): `target` tokens (at least 1), the first `shared_prefix_tokens`
        of which are shared prefix number `pool_index` of the run. The count equals `target` except
        when a tokenizer's merges make it unreachable (then it is the closest count found, and the
        true one)."""
        target = max(1, target)
        k = min(max(0, shared_prefix_tokens), target)
        shared = self._pool[pool_index]
        if self._one_token_words:
            prefix_words = self._shared_prefix_words(shared, k) if k else []
            text = " ".join(prefix_words + rng.choices(self.words, k=target - k))
            if self._proven:
                return text, target
            prefix = " ".join(prefix_words)
        else:
            prefix = text = self._shared_prefix_text(shared, k) if k else ""
        best = self._fit(text, target, rng)
        for _ in range(_RETRIES):  # rare: a tokenizer whose merges at the cut miss the target
            if best[1] == target:
                break
            again = self._fit(prefix, target, rng)
            if abs(again[1] - target) < abs(best[1] - target):
                best = again
        return best

    def _shared_prefix_words(self, shared: _SharedPrefix, k: int) -> list[str]:
        while len(shared.words) < k:
            shared.words += shared.rng.choices(self.words, k=_SHARED_BLOCK)
        return shared.words[:k]

    def _shared_prefix_text(self, shared: _SharedPrefix, k: int) -> str:
        """Trimming path: the text of the first `k` tokens of the shared word sequence."""
        assert self._tok is not None
        text = shared.texts.get(k)
        if text is None:
            while len(shared.ids) < k:  # every word is at least one token
                words = self._shared_prefix_words(shared, len(shared.words) + _SHARED_BLOCK)
                shared.ids = self._tok.encode(" ".join(words))
            text = shared.texts[k] = self._tok.decode(shared.ids[:k])
        return text

    def _fit(self, text: str, target: int, rng: random.Random) -> tuple[str, int]:
        """Grow `text` with words past `target` tokens, then cut token slices until one re-encodes
        to exactly `target` tokens. Only the end of the text changes, so a prefix stays shared."""
        assert self._tok is not None
        tok = self._tok
        ids = tok.encode(text) if text else []
        for _ in range(64):
            if len(ids) >= target:
                break
            more = " ".join(rng.choices(self.words, k=target - len(ids)))
            text = f"{text} {more}" if text else more
            ids = tok.encode(text)
        if len(ids) == target:
            return text, target
        best, best_n = text, len(ids)
        cut, tried = target, set[int]()
        while 1 <= cut <= len(ids) and cut not in tried and len(tried) < 32:
            tried.add(cut)
            candidate = tok.decode(ids[:cut])
            n = tok.count(candidate)
            if n == target:
                return candidate, n
            if abs(n - target) < abs(best_n - target):
                best, best_n = candidate, n
            cut += target - n
        return best, best_n
