"""The built-in token-count approximation used when no `client.tokenizer` is configured."""

from __future__ import annotations

import pytest
from veeksha.runner.sessions.prompts import WORDS
from veeksha.runner.sessions.tokenizer import count_tokens_approx, resolve_tokenizer_file
from veeksha.runner.simserver.engine import WORDS as SERVER_WORDS
from veeksha.shared.errors import ConfigError

CHINESE_REPLY = "量子计算利用量子比特的叠加和纠缠特性进行计算。" * 20  # 460 characters, no space


def test_english_words_count_one_token_each() -> None:
    # Synthetic prompts and the simulated server's replies are made of these: one token per word.
    assert count_tokens_approx(" ".join(WORDS)) == len(WORDS)
    assert count_tokens_approx(" ".join(SERVER_WORDS)) == len(SERVER_WORDS)
    assert count_tokens_approx("The capital of France is Paris.") == 6
    assert count_tokens_approx("  information\n\tdifferent ") == 2  # words of up to 15 characters: 1 each


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        (CHINESE_REPLY, 460),  # cl100k_base: 500
        ("请详细解释一下量子计算的基本原理以及它与经典计算的区别", 27),  # cl100k_base: 30
        ("今日はとても良い天気ですね。カタカナも少し使います。", 26),  # kana and kanji; cl100k_base: 25
        ("안녕하세요 오늘", 7),  # hangul syllables; cl100k_base: 8
        ("量子\u3000计算", 4),  # the ideographic space separates, it is no token
        ("ＡＢＣ１２３", 6),  # full-width forms
    ],
    ids=["chinese-reply", "chinese-question", "japanese", "korean", "ideographic-space", "full-width"],
)
def test_cjk_kana_and_hangul_count_one_token_per_character(text: str, tokens: int) -> None:
    assert count_tokens_approx(text) == tokens


def test_cjk_between_english_words_counts_both() -> None:
    assert count_tokens_approx("Use the 量子计算 library: import numpy as np") == 7 + 4  # cl100k_base: 13


@pytest.mark.parametrize(
    ("length", "tokens"),
    [(1, 1), (11, 1), (12, 1), (15, 1), (16, 2), (20, 3), (460, 113), (4000, 998)],
)
def test_a_long_run_without_spaces_counts_about_a_token_per_four_characters(length: int, tokens: int) -> None:
    assert count_tokens_approx("x" * length) == tokens


def test_a_url_counts_close_to_a_real_tokenizer() -> None:
    url = "https://example.com/some/long/path/to/a/resource?query=value&other=thing"  # 72 characters
    assert count_tokens_approx(url) == 16  # cl100k_base: 19


def test_no_text_is_no_token() -> None:
    assert count_tokens_approx("") == 0
    assert count_tokens_approx(" \n\t\u3000") == 0


def test_a_tokenizer_path_of_an_unknown_user_names_the_key() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^config error at client\.tokenizer: '~nouser-x9/tok\.json' starts with ~, but nouser-x9 has "
        "no home directory on this machine; give the full path$",
    ):
        resolve_tokenizer_file("~nouser-x9/tok.json")
