"""Token counting: a configured local tokenizer when given, else a built-in approximation.

The approximation counts whitespace-separated words. Synthetic prompts are built from words that are
one token in common BPE vocabularies, so for our own prompts the count is close to a real tokenizer's;
records say `token_count_source: approximate` whenever it was used.
"""

from __future__ import annotations


def count_tokens_approx(text: str) -> int:
    return len(text.split())
