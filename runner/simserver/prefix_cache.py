"""The simulated server's prefix cache: prompts share work only where their leading blocks are equal.

Like vLLM's automatic prefix caching, a prompt is cut into blocks of BLOCK_TOKENS tokens (words, here:
the server counts a word as a token) and each full block is identified by a hash chained over every
block before it, so a block is a hit only when the whole prefix up to it was seen before. Blocks are
kept in LRU order, at most `capacity_tokens` worth. At least one prompt token is always computed, as
on vLLM. `queries` and `hits` count prompt tokens, under vLLM's metric names' meaning.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

BLOCK_TOKENS = 16


class PrefixCache:
    def __init__(self, capacity_tokens: int) -> None:
        self.capacity_blocks = max(1, capacity_tokens // BLOCK_TOKENS)
        self._blocks: OrderedDict[int, None] = OrderedDict()
        self.queries = 0
        self.hits = 0

    def lookup(self, words: list[str]) -> int:
        """Cached tokens at the start of this prompt; its full blocks are cached from now on."""
        cached, missed = 0, False
        for block in _block_hashes(words):
            if not missed and block in self._blocks:
                self._blocks.move_to_end(block)
                cached += BLOCK_TOKENS
            else:
                missed = True
                self._insert(block)
        cached = min(cached, max(0, len(words) - 1))
        self.queries += len(words)
        self.hits += cached
        return cached

    def remember(self, words: list[str]) -> None:
        """Cache a finished sequence's full blocks (its prompt and reply): a later turn that carries
        this conversation as history finds it, as vLLM keeps the blocks a request generated."""
        for block in _block_hashes(words):
            if block in self._blocks:
                self._blocks.move_to_end(block)
            else:
                self._insert(block)

    def _insert(self, block: int) -> None:
        self._blocks[block] = None
        self._blocks.move_to_end(block)
        while len(self._blocks) > self.capacity_blocks:
            self._blocks.popitem(last=False)


def _block_hashes(words: list[str]) -> Iterator[int]:
    """The hash of each full block, chained over every block before it."""
    prefix = 0
    for start in range(0, len(words) - BLOCK_TOKENS + 1, BLOCK_TOKENS):
        prefix = hash((prefix, *words[start : start + BLOCK_TOKENS]))
        yield prefix
