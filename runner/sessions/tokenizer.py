"""Token counting: a configured local tokenizer when given, else a built-in approximation.

The approximation (`count_tokens_approx`, the one place it is defined) counts:
- each CJK ideograph, kana, hangul syllable or jamo, CJK or full-width punctuation: one token
  (cl100k_base gives 0.95-1.1 per character of Chinese, Japanese and Korean text; these have no
  spaces between words, so counting words made a 460-character Chinese reply one token);
- every other run of non-space characters (an English word, a URL, code): one token up to 15
  characters, and (n - 8) // 4 tokens for a run of n characters beyond that, so about one per
  four characters for long runs.
Synthetic prompts are built from words that are one token in common BPE vocabularies, and so are the
simulated server's replies: for them it counts one token per word, as a real tokenizer does. Of the
distinct English words in our docs and the common licences, 87% count as cl100k_base does (0.16
tokens off on average, as counting words was); punctuation is not counted, so prose counts ~30% low.
Other scripts without spaces (Thai, Khmer...) count as long runs: low too. Records say
`token_count_source: approximate` whenever it was used; configure `client.tokenizer` for exact counts.

A configured tokenizer (`client.tokenizer`) is a local `tokenizer.json`, or a directory holding one
(a Hugging Face model folder). It is read with the optional `tokenizers` package and is never
downloaded. Counts exclude special tokens (BOS/EOS): they measure the text itself.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from veeksha.shared.errors import ConfigError
from veeksha.shared.records import COUNT_APPROXIMATE, COUNT_TOKENIZER
from veeksha.shared.userpath import expand_home

TOKENIZER_FILE = "tokenizer.json"


# One token per character: CJK/kana/hangul (U+1100-11FF jamo, U+2E80-2FFF radicals, U+3001-9FFF
# CJK punctuation, kana, bopomofo, compatibility jamo and ideographs, U+A960-A97F and U+AC00-D7FF
# hangul, U+F900-FAFF compatibility ideographs, U+FE30-FE4F compatibility forms, U+FF00-FFEF half-
# and full-width forms, U+1B000-1B16F kana supplement, U+20000-3134F ideograph extensions). U+3000,
# the ideographic space, is left out: it separates like any space. Matched as runs: one split of a
# Chinese text cuts it at a few places, where a match per character would cost ~30 times more.
_ONE_PER_CHAR_RUN = re.compile(
    "[\u1100-\u11ff\u2e80-\u2fff\u3001-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff"
    "\ufe30-\ufe4f\uff00-\uffef\U0001b000-\U0001b16f\U00020000-\U0003134f]+"
)
# A run of other non-space characters longer than this counts (n - 8) // 4 tokens, else 1: every
# word of the prompt and server vocabularies (up to 11 letters) stays one token.
_ONE_TOKEN_RUN = 15


def count_tokens_approx(text: str) -> int:
    """The approximate token count of `text` (module docstring: the rules and how close they are)."""
    per_char = 0
    if not text.isascii():  # ASCII text, the common case, skips the character scan
        parts = _ONE_PER_CHAR_RUN.split(text)  # the text between the runs
        per_char = len(text) - sum(map(len, parts))
        text = " ".join(parts)  # a run separates what is on either side, as a space does
    runs = text.split()
    count = len(runs) + per_char
    # The longest run first (one C-level pass): English text rarely has a long run.
    if runs and len(max(runs, key=len)) > _ONE_TOKEN_RUN:
        count += sum(_long_run_tokens(len(run)) - 1 for run in runs if len(run) > _ONE_TOKEN_RUN)
    return count


def _long_run_tokens(n: int) -> int:
    """Tokens of a run of n > _ONE_TOKEN_RUN non-space characters: about one per four characters
    (continuous with the single token of shorter runs: 16 characters are 2)."""
    return (n - 8) // 4


class LocalTokenizer:
    """A loaded `tokenizers.Tokenizer` with the few operations the runner needs."""

    __slots__ = ("_tok", "path")

    def __init__(self, tok: Any, path: Path) -> None:
        self._tok = tok
        self.path = path

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def count_batch(self, texts: Sequence[str]) -> list[int]:
        """Counts of many texts in one call (the Rust side parallelises it)."""
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [len(e.ids) for e in encodings]


def resolve_tokenizer_file(path: str) -> Path:
    """The tokenizer.json that `client.tokenizer: path` names; ConfigError when there is none."""
    if "://" in path:
        raise ConfigError(
            f"client.tokenizer: {path!r} looks like a URL; give a local tokenizer.json path "
            "(tokenizers are never downloaded)"
        )
    p = expand_home(path, "config error at client.tokenizer", ConfigError)
    if p.is_dir():
        p = p / TOKENIZER_FILE
        if not p.is_file():
            raise ConfigError(
                f"client.tokenizer: directory {path!r} has no {TOKENIZER_FILE}; point at a "
                f"{TOKENIZER_FILE} file or a Hugging Face tokenizer folder that contains one"
            )
    elif not p.is_file():
        raise ConfigError(f"client.tokenizer: {path!r} does not exist (expected a {TOKENIZER_FILE} file)")
    return p


@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str) -> LocalTokenizer:
    """Load (once per process) the local tokenizer `path` names; errors are ConfigErrors."""
    file = resolve_tokenizer_file(path)
    try:
        import tokenizers  # optional dependency: imported only when a tokenizer is configured
    except ImportError:
        raise ConfigError(
            f"client.tokenizer: {path!r} needs the 'tokenizers' package; install veeksha[tokenizer]"
        ) from None
    try:
        tok = tokenizers.Tokenizer.from_file(str(file))
    except Exception as e:  # the Rust side raises plain Exception for any malformed file
        raise ConfigError(f"client.tokenizer: cannot load {file}: {e}") from None
    return LocalTokenizer(tok, file)


def token_counter(path: str | None) -> tuple[Callable[[str], int], str]:
    """(count function, token_count_source) for `client.tokenizer` (None = the approximation)."""
    if path is None:
        return count_tokens_approx, COUNT_APPROXIMATE
    return load_tokenizer(path).count, COUNT_TOKENIZER
