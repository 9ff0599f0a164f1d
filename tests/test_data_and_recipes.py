import csv
import json
import re
from collections import Counter

import pytest
from pydantic import ValidationError

from training.data.text import load_text_splits, read_labelled_texts, resolve_source
from training.recipe import Recipe, RecipeError, list_recipes, load_recipe

INTENTS = {
    "check_balance",
    "transfer_money",
    "report_lost_card",
    "dispute_charge",
    "change_pin",
    "open_account",
    "close_account",
    "loan_inquiry",
    "update_contact_details",
    "speak_to_agent",
}


def test_every_recipe_validates():
    names = list_recipes()
    assert "intent" in names
    for name in names:
        assert load_recipe(name).name == name


def test_recipe_rejects_unknown_fields_and_bad_values():
    data = load_recipe("intent").model_dump()
    with pytest.raises(ValidationError):
        Recipe.model_validate({**data, "epochz": 3})
    with pytest.raises(ValidationError):
        Recipe.model_validate({**data, "train": {**data["train"], "lr": -1}})
    dynamic = {**data["quantise"], "mode": "dynamic", "float_layers": ["head."]}
    with pytest.raises(ValidationError, match="float_layers applies to mode: static only"):
        Recipe.model_validate({**data, "quantise": dynamic})
    ranges = {**data["quantise"], "mode": "dynamic", "calibration_method": "least-error"}
    with pytest.raises(ValidationError, match="calibration_method applies to mode: static only"):
        Recipe.model_validate({**data, "quantise": ranges})
    with pytest.raises(ValidationError, match="calibration_method"):
        Recipe.model_validate({**data, "quantise": {**data["quantise"], "calibration_method": "mse"}})
    with pytest.raises(RecipeError, match="known recipes"):
        load_recipe("no-such-recipe")


def test_every_recipe_preprocessing_fits_its_task():
    from training.tasks import TASKS, get_task

    for name in list_recipes():
        recipe = load_recipe(name)
        options = get_task(recipe.task).validate_preprocessing(recipe)
        assert options.model_dump(exclude_unset=True).keys() == recipe.preprocessing.keys()
    # one default for augmentation, off: the recipes that train with it say so
    assert {task.preprocessing_model.model_fields["augment_strength"].default for task in TASKS.values()} == {
        0.0
    }
    assert load_recipe("keywords").preprocessing["augment_strength"] == 1.0
    assert load_recipe("surface-defects").preprocessing["augment_strength"] == 1.0


@pytest.mark.parametrize(
    "name, key, value, message",
    [
        ("intent", "max_lenght", 64, "preprocessing.max_lenght: Extra inputs are not permitted"),
        ("energy-demand", "horizon", 500, "preprocessing.horizon: Input should be less than or equal to 168"),
        (
            "credit-risk",
            "features",
            {"age": {"knd": "numeric"}},
            "preprocessing.features.age.knd: Extra inputs",
        ),
        (
            "diagnosis",
            "class_weight",
            "balance",
            "preprocessing.class_weight: Input should be 'balanced' or 'none'",
        ),
        ("surface-defects", "crops", 64, "preprocessing.crops: Extra inputs are not permitted"),
    ],
)
def test_a_preprocessing_typo_fails_naming_the_key(name, key, value, message):
    from training.tasks import get_task

    recipe = load_recipe(name).with_overrides({f"preprocessing.{key}": value})
    with pytest.raises(RecipeError) as err:
        get_task(recipe.task).validate_preprocessing(recipe)
    assert message in str(err.value) and f"recipe {name!r}" in str(err.value)


def test_overrides_are_revalidated():
    recipe = load_recipe("intent").with_overrides({"train.epochs": 2, "data.limit": None})
    assert recipe.train.epochs == 2
    with pytest.raises(ValidationError):
        load_recipe("intent").with_overrides({"train.epochs": -1})


def test_shipped_intent_dataset():
    rows = read_labelled_texts(resolve_source(load_recipe("intent").data.source))
    counts = Counter(label for _, label in rows)
    assert set(counts) == INTENTS
    assert min(counts.values()) >= 80
    normalised = [re.sub(r"[^a-z0-9 ]", "", t.lower()).strip() for t, _ in rows]
    assert len(set(normalised)) == len(normalised), "duplicate utterances"
    assert all(t.strip() for t, _ in rows)


def test_split_is_deterministic_stratified_and_disjoint():
    recipe = load_recipe("intent")
    d = recipe.data
    a = load_text_splits(d.source, recipe.labels, d.val_fraction, d.test_fraction, d.seed)
    b = load_text_splits(d.source, recipe.labels, d.val_fraction, d.test_fraction, d.seed)
    assert a.test.texts == b.test.texts and a.train.texts == b.train.texts
    assert not set(a.train.texts) & set(a.test.texts)
    assert not set(a.val.texts) & set(a.test.texts)
    assert set(a.test.labels) == set(range(10))


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_users_own_data_formats(tmp_path, fmt):
    rows = [(f"text number {i}", "yes" if i % 2 else "no") for i in range(40)]
    path = tmp_path / f"data.{fmt}"
    if fmt == "csv":
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "text", "label"])
            w.writerows([(i, t, lab) for i, (t, lab) in enumerate(rows)])
    else:
        path.write_text("\n".join(json.dumps({"text": t, "label": lab}) for t, lab in rows) + "\n")
    splits = load_text_splits(str(path), None, 0.1, 0.2, seed=1)
    assert splits.label_names == ["no", "yes"]
    assert len(splits.train) + len(splits.val) + len(splits.test) == 40


def test_bad_user_data_is_named(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("sentence,intent\nhello,greet\n")
    with pytest.raises(ValueError, match="lacks column"):
        read_labelled_texts(path)
    with pytest.raises(FileNotFoundError):
        read_labelled_texts(tmp_path / "missing.csv")
