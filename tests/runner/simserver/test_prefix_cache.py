"""The simulated server's prefix cache, alone and measured from outside over real loopback HTTP."""

from __future__ import annotations

import httpx
from veeksha.runner.simserver.prefix_cache import BLOCK_TOKENS, PrefixCache

from tests.runner.simserver.test_server import FAST, root, sim_server


def words(n: int, tag: str) -> list[str]:
    return [f"{tag}{i}" for i in range(n)]


def test_only_whole_leading_blocks_seen_before_are_hits() -> None:
    cache = PrefixCache(capacity_tokens=10_000)
    first = words(40, "a")
    assert cache.lookup(first) == 0  # nothing seen yet; its 2 full blocks are cached now
    assert cache.lookup(first + words(10, "b")) == 2 * BLOCK_TOKENS
    changed_start = ["x", *first[1:]]
    assert cache.lookup(changed_start) == 0  # the chained hash: a different first block misses all
    assert (cache.queries, cache.hits) == (40 + 50 + 40, 32)


def test_at_least_one_token_is_computed_and_old_blocks_are_evicted() -> None:
    cache = PrefixCache(capacity_tokens=2 * BLOCK_TOKENS)
    exact = words(BLOCK_TOKENS, "a")
    cache.lookup(exact)
    assert cache.lookup(exact) == BLOCK_TOKENS - 1  # a prompt is never entirely free
    cache.lookup(words(2 * BLOCK_TOKENS, "b"))  # two new blocks push the first out
    assert cache.lookup(exact) == 0


def stats(client: httpx.Client, base: str) -> dict:
    return client.get(f"{base}/sim/stats").json()


def test_repeated_prompts_hit_and_different_ones_do_not_over_http() -> None:
    prompt = " ".join(words(64, "w"))
    with (
        sim_server(**FAST) as handle,
        httpx.Client(base_url=handle.api_base, timeout=10, trust_env=False) as c,
    ):
        body = {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": prompt}]}
        c.post("/chat/completions", json=body).raise_for_status()
        before = stats(c, root(handle))
        c.post("/chat/completions", json=body).raise_for_status()
        other = {**body, "messages": [{"role": "user", "content": " ".join(words(64, "v"))}]}
        c.post("/chat/completions", json=other).raise_for_status()
        after = stats(c, root(handle))
    assert before["prefix_cache_hits"] == 0
    assert after["prefix_cache_hits"] == 64  # the repeat (4 blocks of 16); the other prompt none
    assert after["prefix_cache_queries"] == 3 * 65  # 64 words and the role marker each time


def test_the_cache_can_be_turned_off() -> None:
    prompt = " ".join(words(64, "w"))
    with (
        sim_server(**FAST, prefix_cache=False) as handle,
        httpx.Client(base_url=handle.api_base, timeout=10, trust_env=False) as c,
    ):
        body = {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": prompt}]}
        for _ in range(2):
            c.post("/chat/completions", json=body).raise_for_status()
        assert stats(c, root(handle))["prefix_cache_hits"] == 0
