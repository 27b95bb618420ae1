"""Token counting: a configured local tokenizer when given, else a built-in approximation.

The approximation counts whitespace-separated words. Synthetic prompts are built from words that are
one token in common BPE vocabularies, so for our own prompts the count is close to a real tokenizer's;
records say `token_count_source: approximate` whenever it was used.

A configured tokenizer (`client.tokenizer`) is a local `tokenizer.json`, or a directory holding one
(a Hugging Face model folder). It is read with the optional `tokenizers` package and is never
downloaded. Counts exclude special tokens (BOS/EOS): they measure the text itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from veeksha.shared.errors import ConfigError
from veeksha.shared.records import COUNT_APPROXIMATE, COUNT_TOKENIZER

TOKENIZER_FILE = "tokenizer.json"


def count_tokens_approx(text: str) -> int:
    return len(text.split())


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


def expand_home(path: str, key: str) -> Path:
    """`~/x` and `~user/x` as the shell would; a user without a home here (a config written on
    another machine) is a config error naming `key`, not pathlib's RuntimeError traceback."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        user = path[1:].split("/", 1)[0] or "the current user"
        raise ConfigError(
            f"config error at {key}: {path!r} starts with ~, but {user} has no home directory on this "
            "machine; give the full path"
        ) from None


def resolve_tokenizer_file(path: str) -> Path:
    """The tokenizer.json that `client.tokenizer: path` names; ConfigError when there is none."""
    if "://" in path:
        raise ConfigError(
            f"client.tokenizer: {path!r} looks like a URL; give a local tokenizer.json path "
            "(tokenizers are never downloaded)"
        )
    p = expand_home(path, "client.tokenizer")
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
