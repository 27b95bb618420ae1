"""Prompt text of an exact token count, with and without a local tokenizer.

The tokenizers here are trained in the test with `tokenizers`' own trainers (nothing is downloaded):
a word-level-friendly byte-level BPE like GPT-2/Llama-3, a SentencePiece-style Metaspace BPE like
Llama-2/Mistral, and a tiny-vocabulary BPE whose words span several tokens (the trimming path).
"""

from __future__ import annotations

import itertools
import random
import sys
from pathlib import Path

import pytest
from veeksha.runner.sessions.prompts import WORDS, PromptBuilder, all_pairs_text
from veeksha.runner.sessions.tokenizer import (
    LocalTokenizer,
    count_tokens_approx,
    load_tokenizer,
    token_counter,
)
from veeksha.shared.errors import ConfigError
from veeksha.shared.records import COUNT_APPROXIMATE, COUNT_TOKENIZER

tokenizers = pytest.importorskip("tokenizers")


def train_tokenizer(path: Path, vocab_size: int = 2000, style: str = "byte_level") -> Path:
    """Train a small BPE tokenizer on text of our prompt words and save it as `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    alphabet: list[str] = []
    if style == "byte_level":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
    rng = random.Random(0)
    corpus = [" ".join(rng.choices(WORDS, k=50)) for _ in range(200)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


@pytest.fixture(autouse=True)
def _fresh_tokenizer_cache() -> None:
    load_tokenizer.cache_clear()


# ---------------------------------------------------------------- without a tokenizer


def test_approximate_prompts_hit_the_target_word_count_exactly() -> None:
    builder = PromptBuilder(None, [random.Random(0)])
    rng = random.Random(1)
    assert builder.token_count_source == COUNT_APPROXIMATE
    for target in (1, 2, 7, 100, 512, 4096):
        text, count = builder.build(target, rng)
        assert count == target == count_tokens_approx(text)
        assert set(text.split(" ")) <= set(WORDS)  # single spaces, only listed words


def test_a_target_below_one_still_gives_one_token() -> None:
    text, count = PromptBuilder(None, [random.Random(0)]).build(0, random.Random(1))
    assert count == 1 == count_tokens_approx(text)


def test_prompts_differ_between_draws_so_prefix_caches_cannot_serve_them() -> None:
    builder = PromptBuilder(None, [random.Random(0)])
    rng = random.Random(1)
    texts = [builder.build(300, rng)[0] for _ in range(50)]
    first_16_words = {tuple(t.split()[:16]) for t in texts}
    assert len(first_16_words) == 50


def test_the_shared_prefix_is_the_same_text_in_every_prompt_that_asks_for_it() -> None:
    builder = PromptBuilder(None, [random.Random(0)])
    rng = random.Random(1)
    a, _ = builder.build(200, rng, shared_prefix_tokens=100)
    b, _ = builder.build(400, rng, shared_prefix_tokens=50)
    c, n = builder.build(30, rng, shared_prefix_tokens=1000)  # capped at the prompt's length
    assert a.split()[:50] == b.split()[:50]
    assert a.split()[:30] == c.split() and n == 30
    assert a.split()[100:110] != b.split()[100:110]  # after the prefix, each prompt is its own


def test_the_shared_prefix_does_not_depend_on_which_lengths_were_asked_first() -> None:
    one = PromptBuilder(None, [random.Random(5)])
    two = PromptBuilder(None, [random.Random(5)])
    long_first = one.build(2000, random.Random(1), 2000)[0]
    two.build(10, random.Random(1), 10)
    assert two.build(2000, random.Random(1), 2000)[0] == long_first


def test_every_listed_word_is_a_plain_lowercase_word() -> None:
    assert len(set(WORDS)) == len(WORDS) >= 128
    assert all(w.isascii() and w.isalpha() and w.islower() for w in WORDS)


def test_the_all_pairs_text_puts_every_ordered_pair_side_by_side() -> None:
    words = ["a", "b", "c", "d"]
    seq = all_pairs_text(words).split()
    assert set(itertools.pairwise(seq)) == {(x, y) for x in words for y in words}
    assert len(seq) == len(words) ** 2 + 1


# ---------------------------------------------------------------- with a tokenizer


@pytest.mark.parametrize(
    ("style", "vocab_size"),
    [("byte_level", 2000), ("metaspace", 2000), ("byte_level", 300), ("metaspace", 60)],
    ids=["byte-level", "metaspace", "byte-level-tiny-vocab", "metaspace-tiny-vocab"],
)
def test_tokenizer_prompts_hit_the_target_exactly(tmp_path: Path, style: str, vocab_size: int) -> None:
    path = train_tokenizer(tmp_path / "tokenizer.json", vocab_size, style)
    tok = load_tokenizer(str(path))
    builder = PromptBuilder(tok, [random.Random(0)])
    rng = random.Random(1)
    assert builder.token_count_source == COUNT_TOKENIZER
    for target in [1, 2, 3, 17, 64, 255, 256, 300, 777]:
        text, count = builder.build(target, rng, shared_prefix_tokens=target // 3)
        assert count == target
        assert tok.count(text) == target, (target, text)


def test_tiny_vocab_prompts_still_share_their_prefix(tmp_path: Path) -> None:
    tok = load_tokenizer(str(train_tokenizer(tmp_path / "tokenizer.json", 300)))
    builder = PromptBuilder(tok, [random.Random(0)])
    a, _ = builder.build(200, random.Random(1), shared_prefix_tokens=100)
    b, _ = builder.build(200, random.Random(2), shared_prefix_tokens=100)
    prefix = builder._shared_prefix_text(builder._pool[0], 100)
    assert a.startswith(prefix) and b.startswith(prefix) and a != b


def test_a_tokenizer_directory_holding_tokenizer_json_loads(tmp_path: Path) -> None:
    train_tokenizer(tmp_path / "model" / "tokenizer.json")
    tok = load_tokenizer(str(tmp_path / "model"))
    assert isinstance(tok, LocalTokenizer)
    text = "time people water"
    ids = tok.encode(text)
    assert tok.count(text) == len(ids) >= 3
    assert tok.count_batch(["time", text]) == [tok.count("time"), len(ids)]
    assert tok.decode(ids) == text
    count, source = token_counter(str(tmp_path / "model"))
    assert (count(text), source) == (len(ids), COUNT_TOKENIZER)
    assert token_counter(None) == (count_tokens_approx, COUNT_APPROXIMATE)


def test_a_missing_tokenizer_path_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"client\.tokenizer: .*nope\.json.* does not exist"):
        load_tokenizer(str(tmp_path / "nope.json"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"client\.tokenizer: directory .*empty.* has no tokenizer\.json"):
        load_tokenizer(str(tmp_path / "empty"))


def test_a_tokenizer_url_is_refused_because_nothing_is_downloaded() -> None:
    with pytest.raises(ConfigError, match="never downloaded"):
        load_tokenizer("https://huggingface.co/gpt2/resolve/main/tokenizer.json")


def test_a_malformed_tokenizer_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=r"client\.tokenizer: cannot load"):
        load_tokenizer(str(bad))


# Loads, then fails on the first word outside its vocabulary: its unk_token is not in the vocabulary.
UNK_LESS_TOKENIZER = (
    '{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,'
    '"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,'
    '"model":{"type":"WordLevel","vocab":{"time":0},"unk_token":"[UNK]"}}'
)


def test_a_tokenizer_that_loads_but_cannot_encode_is_a_config_error(tmp_path: Path) -> None:
    """It used to end the run with a traceback (exit 1): the tokenizers library raises plain Exception."""
    path = tmp_path / "tokenizer.json"
    path.write_text(UNK_LESS_TOKENIZER)
    tok = load_tokenizer(str(path))
    expected = (
        r"^config error at client\.tokenizer: .*tokenizer\.json cannot encode text \(.*\): .*Missing \[UNK\]"
    )
    with pytest.raises(ConfigError, match=expected + r".*; give a tokenizer that can$"):
        PromptBuilder(tok, [random.Random(0)])


def test_without_the_tokenizers_package_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The package is installed here; hiding it from the import system is the only way to see this.
    path = train_tokenizer(tmp_path / "tokenizer.json")
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ConfigError, match=r"install veeksha\[tokenizer\]"):
        load_tokenizer(str(path))
