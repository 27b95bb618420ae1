"""Prompt text of an exact target token count.

Prompts are random sequences of common English words joined by single spaces. Every word in
`WORDS` is one token (with or without a leading space) in the common BPE vocabularies, so without a
tokenizer `count_tokens_approx(text)` equals the target exactly and a real tokenizer agrees closely.
With a configured tokenizer the words it does not keep as one token are dropped once at start, and
each prompt's count is checked; a tokenizer where too few words survive falls back to trimming
token slices until the count matches.

Each prompt draws its words from the caller's random stream, so prompts differ across sessions and a
server's prefix cache cannot make them free, except the run's shared prefix (one word sequence per
run) that `shared_prefix_tokens` asks for.
"""

from __future__ import annotations

import random

from veeksha.runner.tokenizer import LocalTokenizer
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


def single_token_words(tokenizer: LocalTokenizer, words: tuple[str, ...] = WORDS) -> list[str]:
    """The words `tokenizer` encodes as one token at the start of a text and after a space."""
    kept = [w for w in words if len(tokenizer.encode(f"{w} {w}")) == 2]
    # Joined text must count one token per word too (no merges across the spaces).
    if kept and tokenizer.count(" ".join(kept)) != len(kept):
        return []
    return kept


class PromptBuilder:
    """Builds prompt texts of an exact token count, counted by `tokenizer` or the approximation."""

    def __init__(self, tokenizer: LocalTokenizer | None, shared_rng: random.Random) -> None:
        self._tok = tokenizer
        self._shared_rng = shared_rng
        self._shared_words: list[str] = []
        self._shared_ids: list[int] = []  # trimming path only: tokens of the shared word sequence
        self._shared_texts: dict[int, str] = {}
        if tokenizer is None:
            self.words: tuple[str, ...] = WORDS
            self._one_token_words = True
            self.token_count_source = COUNT_APPROXIMATE
        else:
            kept = single_token_words(tokenizer)
            self._one_token_words = len(kept) >= MIN_WORDS
            self.words = tuple(kept) if self._one_token_words else WORDS
            self.token_count_source = COUNT_TOKENIZER

    def count(self, text: str) -> int:
        return self._tok.count(text) if self._tok is not None else len(text.split())

    def build(self, target: int, rng: random.Random, shared_prefix_tokens: int = 0) -> tuple[str, int]:
        """(text, its token count): `target` tokens (at least 1), the first `shared_prefix_tokens`
        of which are the run's shared prefix. The count equals `target` except when a tokenizer's
        merges make it unreachable (then it is the closest count found, and the true one)."""
        target = max(1, target)
        k = min(max(0, shared_prefix_tokens), target)
        if self._one_token_words:
            words = self._shared_prefix_words(k) if k else []
            words += rng.choices(self.words, k=target - k)
            text = " ".join(words)
            if self._tok is None:
                return text, target
            n = self._tok.count(text)
            if n == target:
                return text, n
            return self._fit(text, target, rng)
        return self._fit(self._shared_prefix_text(k) if k else "", target, rng)

    def _shared_prefix_words(self, k: int) -> list[str]:
        while len(self._shared_words) < k:
            self._shared_words += self._shared_rng.choices(self.words, k=_SHARED_BLOCK)
        return self._shared_words[:k]

    def _shared_prefix_text(self, k: int) -> str:
        """Trimming path: the text of the first `k` tokens of the shared word sequence."""
        assert self._tok is not None
        text = self._shared_texts.get(k)
        if text is None:
            while len(self._shared_ids) < k:  # every word is at least one token
                words = self._shared_prefix_words(len(self._shared_words) + _SHARED_BLOCK)
                self._shared_ids = self._tok.encode(" ".join(words))
            text = self._shared_texts[k] = self._tok.decode(self._shared_ids[:k])
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
        best, best_n = text, len(ids)
        cut, tried = target, set()
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
