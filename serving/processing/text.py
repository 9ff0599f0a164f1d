"""Tokenisation for text models with the `tokenizers` library, from the exported tokenizer.json.

Training and serving both call `TextPreprocessor.encode`, so a model sees the same ids in both.
Batches are padded to their longest item, not to a fixed length. A long text is tokenised from a
prefix that holds its first `max_length` tokens, never in full: the ids, offsets and `truncated`
flag are those of the whole text, at the cost of the part the model reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

_SURROGATE = re.compile("[\ud800-\udfff]")
PREFIX_CHARS_PER_TOKEN = 8  # the first prefix tried: generous for words, cheap to tokenise
_SPACE = re.compile(r"\s")  # every pre-tokenizer ends a word here


def replace_surrogates(text: str) -> str:
    """Lone UTF-16 surrogates are valid in a Python str (and in JSON's \\uXXXX escapes) but not in
    UTF-8, which the tokenizer and the JSON response need; each becomes U+FFFD, so character offsets
    into the original text still hold."""
    return _SURROGATE.sub("\ufffd", text)


@dataclass
class TextBatch:
    input_ids: np.ndarray  # (batch, seq) int64
    attention_mask: np.ndarray  # (batch, seq) int64
    truncated: list[bool]  # True where the text was longer than max_length tokens
    encodings: list[Encoding]  # offsets and word ids, for token-level outputs

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


class TextPreprocessor:
    def __init__(self, tokenizer_path: str | Path, max_length: int, lowercase: bool = False) -> None:
        self.tokenizer_path = Path(tokenizer_path)
        self.max_length = int(max_length)
        self.lowercase = lowercase
        self.tokenizer = Tokenizer.from_file(str(self.tokenizer_path))
        # Padding is done here per batch; truncation keeps [CLS] ... [SEP] within max_length.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.pad_id = self._pad_id()

    def _pad_id(self) -> int:
        for token in ("[PAD]", "<pad>"):
            token_id = self.tokenizer.token_to_id(token)
            if token_id is not None:
                return token_id
        return 0

    @classmethod
    def from_config(cls, model_dir: Path, config: dict) -> TextPreprocessor:
        """Build from the `preprocessing` section of a manifest."""
        return cls(
            Path(model_dir) / config["tokenizer"], config["max_length"], config.get("lowercase", False)
        )

    def config(self, tokenizer_file: str = "tokenizer.json") -> dict:
        return {
            "tokenizer": tokenizer_file,
            "max_length": self.max_length,
            "lowercase": self.lowercase,
            "padding": "longest",
        }

    def tokenize(self, texts: list[str]) -> list[Encoding]:
        """Encodings truncated to max_length. A text longer than the prefix budget is tokenised from a
        prefix cut at a word boundary; only if that prefix does not fill max_length (so the rest could
        still matter) is a four times longer prefix tried, up to the whole text."""
        if self.lowercase:
            texts = [t.lower() for t in texts]
        budget = self.max_length * PREFIX_CHARS_PER_TOKEN
        prefixes = [_prefix(t, budget) for t in texts]
        encodings = self._encode_batch(prefixes)
        pending = [
            i for i, p in enumerate(prefixes) if len(p) < len(texts[i]) and not encodings[i].overflowing
        ]
        while pending:
            budget *= 4
            wider = [_prefix(texts[i], budget) for i in pending]
            for i, prefix, encoding in zip(pending, wider, self._encode_batch(wider)):
                prefixes[i], encodings[i] = prefix, encoding
            pending = [
                i for i in pending if len(prefixes[i]) < len(texts[i]) and not encodings[i].overflowing
            ]
        return encodings

    def _encode_batch(self, texts: list[str]) -> list[Encoding]:
        try:
            return self.tokenizer.encode_batch(texts, add_special_tokens=True)
        except TypeError:  # a lone surrogate somewhere; rare, so the common path pays nothing for it
            return self.tokenizer.encode_batch(
                [replace_surrogates(t) for t in texts], add_special_tokens=True
            )

    def pad(self, encodings: list[Encoding]) -> TextBatch:
        longest = max((len(e.ids) for e in encodings), default=0)
        ids = np.full((len(encodings), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), longest), dtype=np.int64)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        return TextBatch(ids, mask, [bool(e.overflowing) for e in encodings], encodings)

    def encode(self, texts: list[str]) -> TextBatch:
        """Tokenise and pad to the longest text of the batch."""
        return self.pad(self.tokenize(texts))

    def encode_bucketed(self, texts: list[str], bucket_size: int) -> list[tuple[np.ndarray, TextBatch]]:
        """Split a batch into sub-batches of similar length (sorted by token count), so a long text
        does not make every short one pay for its padding. Returns (original positions, batch) pairs."""
        encodings = self.tokenize(texts)
        order = np.argsort([len(e.ids) for e in encodings], kind="stable")
        return [
            (idx, self.pad([encodings[i] for i in idx]))
            for idx in (order[i : i + bucket_size] for i in range(0, len(order), bucket_size))
        ]


def _prefix(text: str, budget: int) -> str:
    """`text` up to `budget` characters, cut before its last whitespace within them, so no word is
    split and no whitespace is left dangling (byte-level BPE joins a space to the word after it);
    the whole text when it is short or has no whitespace there."""
    if len(text) <= budget:
        return text
    cut = max((m.start() for m in _SPACE.finditer(text, 1, budget)), default=0)
    return text[:cut] if cut else text
