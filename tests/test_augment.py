"""Each augmentation keeps its labels valid: entity spans still cover their words, soft targets
are distributions, series targets and the seasonal-naive reference stay consistent."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from training.augment import augment_text, load_lexicon, mixup, tabular_noise
from training.data.entities import generate_entity_sentences


def test_lexicon_loads():
    lexicon = load_lexicon()
    assert len(lexicon) > 50 and "card" in lexicon and all(lexicon.values())


@pytest.mark.parametrize("strength", [0.5, 1.0, 3.0])
def test_entity_spans_survive_text_augmentation(strength):
    rng = np.random.default_rng(0)
    changed = 0
    for ex in generate_entity_sentences(300, seed=4):
        text, spans = augment_text(ex.text, ex.spans, strength, rng)
        changed += text != ex.text
        assert [k for _, _, k in spans] == [k for _, _, k in ex.spans]
        assert [text[s:e] for s, e, _ in spans] == [ex.text[s:e] for s, e, _ in ex.spans]
        assert all(
            e1 <= s2 for (_, e1, _), (s2, _, _) in itertools.pairwise(spans)
        )  # still ordered, disjoint
        assert text.strip() and "  " not in text.strip()
    assert changed > 100


def test_text_augmentation_is_seeded_and_off_at_zero():
    text = "I think someone stole my debit card, please help me cancel it now"
    assert augment_text(text, [], 0.0, np.random.default_rng(1)) == (text, [])
    a = [augment_text(text, [], 1.0, np.random.default_rng(7))[0] for _ in range(2)]
    assert a[0] == a[1]
    variants = {augment_text(text, [], 1.0, np.random.default_rng(s))[0] for s in range(20)}
    assert len(variants) > 10


def test_tabular_noise_touches_only_numeric_columns_and_mixup_targets_are_distributions():
    rng = np.random.default_rng(0)
    numeric = rng.normal(size=(64, 5)).astype(np.float32)
    noisy = tabular_noise(numeric, [0, 2], 1.0, rng)
    assert not np.allclose(noisy[:, [0, 2]], numeric[:, [0, 2]]) and np.array_equal(
        noisy[:, [1, 3, 4]], numeric[:, [1, 3, 4]]
    )
    assert abs(float((noisy - numeric)[:, [0, 2]].std()) - 0.1) < 0.03
    inputs = {"numeric": numeric, "categorical": rng.integers(0, 4, (64, 2))}
    targets = rng.integers(0, 3, 64)
    mixed, soft = mixup(inputs, targets, 3, 0.4, rng)
    assert soft.shape == (64, 3) and np.allclose(soft.sum(1), 1) and (soft >= 0).all() and (soft <= 1).all()
    assert mixed["categorical"].dtype == inputs["categorical"].dtype and set(
        np.unique(mixed["categorical"])
    ) <= {0, 1, 2, 3}
