"""Pruning: structured channel removal keeps shapes and (at amount 0) outputs, unstructured zeroes the
requested fraction, the keep/discard rule, and a tiny real build with `prune` set."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.conftest import tiny_defects_overrides
from training import prune as P
from training.backbones import SmallCNN, count_parameters
from training.recipe import PruneConfig


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and scales, so channel scores and outputs differ per channel."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=g) + 0.1)
                m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def _small_cnn_classifier() -> nn.Module:
    from training.tasks.audio_classification import LogMelClassifier

    torch.manual_seed(0)
    model = LogMelClassifier(SmallCNN(), 160, 12, dropout=0.0, in_channels=1)
    _randomise_bn(model)
    return model.eval()


def _efficientnet_classifier() -> nn.Module:
    import timm

    from training.tasks.image_classification import PooledHeadClassifier

    torch.manual_seed(0)
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    net.reset_classifier(0)
    model = PooledHeadClassifier(net, nn.Linear(1280, 4), dropout=0.0)
    _randomise_bn(model)
    return model.eval()


def test_structured_small_cnn_keeps_shape_and_removes_channels():
    model = _small_cnn_classifier()
    x = torch.randn(3, 1, 64, 101)
    with torch.no_grad():
        reference = model(x)
    pruned = copy.deepcopy(model)
    layers = P.apply_structured(pruned, "small-cnn", 0.3)
    assert [r["before"] for r in layers] == [24, 48, 96, 160]
    assert [r["after"] for r in layers] == [16, 32, 64, 112]  # 70%, rounded to blocks of 8
    assert pruned.head.in_features == 112 and pruned.head.out_features == 12
    with torch.no_grad():
        out = pruned(x)
    assert out.shape == reference.shape
    assert count_parameters(pruned) < 0.6 * count_parameters(model)

    same = copy.deepcopy(model)
    P.apply_structured(same, "small-cnn", 0.0)
    assert count_parameters(same) == count_parameters(model)
    with torch.no_grad():
        torch.testing.assert_close(same(x), reference)


def test_structured_small_cnn_removes_the_weakest_filters():
    model = _small_cnn_classifier()
    conv, bn, following = model.backbone.features[0], model.backbone.features[1], model.backbone.features[4]
    with torch.no_grad():
        bn.weight[5].mul_(1e-4)  # channel 5 barely varies
        following.weight[:, 9].mul_(1e-4)  # and nothing reads channel 9
    original = conv.weight.detach().clone()
    scores = P.channel_scores(bn, following.weight)
    P.prune_small_cnn(model, 8 / 24)
    assert conv.out_channels == 16
    assert bn.num_features == 16 and model.backbone.features[4].in_channels == 16
    kept = [i for i in range(24) if any(torch.equal(original[i], w) for w in conv.weight)]
    assert 5 not in kept and 9 not in kept and kept == sorted(torch.topk(scores, 16).indices.tolist())


def test_structured_efficientnet_block_keeps_shape_and_residual():
    model = _efficientnet_classifier()
    block = model.backbone.blocks[1][1]  # 24 → 144 hidden → 24, with the residual
    assert block.has_skip
    x = torch.randn(2, 24, 16, 16)
    with torch.no_grad():
        reference = block(x)
    pruned = copy.deepcopy(block)
    r = P.prune_inverted_residual(pruned, 0.3)
    assert r == {"before": 144, "after": 104}
    assert pruned.conv_dw.groups == pruned.conv_dw.in_channels == pruned.conv_dw.out_channels == 104
    assert pruned.conv_pwl.in_channels == 104 and pruned.conv_pwl.out_channels == 24
    with torch.no_grad():
        assert pruned(x).shape == reference.shape
    assert count_parameters(pruned) < count_parameters(block)

    same = copy.deepcopy(block)
    P.prune_inverted_residual(same, 0.0)
    with torch.no_grad():
        torch.testing.assert_close(same(x), reference)


def test_structured_efficientnet_whole_model():
    model = _efficientnet_classifier()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
    pruned = copy.deepcopy(model)
    layers = P.apply_structured(pruned, "efficientnet-lite0", 0.3)
    assert (
        len(layers) == 15
    )  # every inverted-residual block (the first, depthwise-separable one has no hidden width)
    assert pruned.head.in_features == 1280  # only hidden widths change
    with torch.no_grad():
        assert pruned(x).shape == reference.shape == (2, 4)
    assert count_parameters(pruned) < 0.9 * count_parameters(model)

    same = copy.deepcopy(model)
    P.apply_structured(same, "efficientnet-lite0", 0.0)
    with torch.no_grad():
        torch.testing.assert_close(same(x), reference)


def test_batchnorm_recalibration_re_estimates_statistics():
    model = _small_cnn_classifier()
    x = torch.randn(64, 1, 32, 48) * 3 + 1
    P.recalibrate_batchnorm(
        model, [({"features": x[:32]}, torch.zeros(32)), ({"features": x[32:]}, torch.zeros(32))]
    )
    assert not model.training and model.norm.momentum == 0.1
    assert model.norm.running_mean.item() == pytest.approx(x.mean().item(), abs=1e-4)
    assert model.norm.running_var.item() == pytest.approx(x.var().item(), rel=0.02)


def test_unstructured_zeroes_the_requested_fraction():
    model = _small_cnn_classifier()
    x = torch.randn(2, 1, 64, 101)
    params = P.apply_unstructured(model, 0.3)
    assert len(params) == 5  # four convs and the head
    total = sum(m.weight.numel() for m, _ in params)
    P.bake_unstructured(params)
    assert not any(hasattr(m, "weight_mask") or hasattr(m, "weight_orig") for m, _ in params)
    assert P.weight_sparsity(model) == pytest.approx(round(0.3 * total) / total, abs=1e-6)
    with torch.no_grad():
        assert model(x).shape == (2, 12)


def test_method_resolution():
    auto = PruneConfig(amount=0.3)
    assert P.resolve_method(auto, "small-cnn") == "structured"
    assert P.resolve_method(auto, "efficientnet-lite0") == "structured"
    assert P.resolve_method(auto, "minilm-l6") == "unstructured"
    with pytest.raises(ValueError, match="structured pruning supports"):
        P.resolve_method(PruneConfig(amount=0.3, method="structured"), "minilm-l6")
    with pytest.raises(ValueError):
        PruneConfig(amount=0.99)


def test_decision_is_honest_about_unstructured_sparsity():
    before = {
        "val_accuracy": 0.95,
        "test_accuracy": 0.95,
        "ms_per_batch8": 10.0,
        "onnx_bytes": 1000,
        "onnx_deflate_bytes": 900,
    }
    same_size = dict(before, ms_per_batch8=10.1, onnx_deflate_bytes=700)
    kept, _, why = P.decide("unstructured", before, same_size, "accuracy", 0.01)
    assert not kept and "neither faster nor smaller" in why and "stored densely" in why


def _measured(val: float, test: float, ms: float = 7.0, size: int = 700) -> dict:
    return {
        "val_accuracy": val,
        "test_accuracy": test,
        "ms_per_batch8": ms,
        "onnx_bytes": size,
        "onnx_deflate_bytes": size,
    }


@pytest.mark.parametrize(
    "after, kept, because",
    [
        (_measured(0.895, 0.80), True, "kept"),  # the test split fell far: it is reported, it does not decide
        (_measured(0.88, 0.90), False, "not accurate enough"),  # validation fell past the limit, test did not
        (_measured(0.89, 0.90), True, "kept"),  # exactly at the limit
        (_measured(0.90, 0.90, ms=9.8, size=950), False, "neither faster nor smaller"),  # 1.02× and 95%
        (_measured(0.90, 0.90, ms=10.0, size=890), True, "kept"),  # smaller only is enough
        (_measured(0.90, 0.90, ms=9.5, size=1000), True, "kept"),  # faster only (1.05×) is enough
    ],
)
def test_keep_rule_reads_the_validation_drop(after, kept, because):
    before = _measured(0.90, 0.90, ms=10.0, size=1000)
    decision, numbers, why = P.decide("structured", before, after, "accuracy", 0.01)
    assert decision == kept and because in why and why.startswith("kept" if kept else "not kept")
    assert numbers["val_metric_drop"] == pytest.approx(0.90 - after["val_accuracy"])
    assert numbers["metric_drop"] == pytest.approx(0.90 - after["test_accuracy"])
    assert numbers["speedup"] == pytest.approx(10.0 / after["ms_per_batch8"]) and numbers[
        "size_ratio"
    ] == pytest.approx(after["onnx_bytes"] / 1000)


def test_build_with_pruning_records_the_comparison(tmp_path, monkeypatch):
    from serving.manifest import load_manifest
    from training.data.surface_defects import generate_surface_defects
    from training.pipeline import build_recipe
    from training.recipe import load_recipe

    monkeypatch.setattr(P, "TIMING_SECONDS", 0.2)
    monkeypatch.setattr(P, "TIMING_ROUNDS", 1)
    images = generate_surface_defects(tmp_path / "defects", per_class=10, size=96, seed=3)
    recipe = load_recipe("surface-defects").with_overrides(
        {
            **tiny_defects_overrides(images),
            "quantise.mode": "none",
            # a 2-step model has large, unscaled logits: float32 rounding between engines reaches ~1e-4
            "export.parity_atol": 1e-3,
            "prune": {"amount": 0.3, "recovery_epochs": 1, "max_metric_drop": 1.0},
        }
    )
    result = build_recipe(recipe, tmp_path / "repo", quiet=True)
    m = load_manifest(result.directory, verify=True)
    report = m.metrics["pruning"]
    assert report["method"] == "structured" and report["amount"] == 0.3
    assert report["channels"]["after"] < report["channels"]["before"]
    assert report["recovery"]["steps"] >= 1
    for side in ("before", "after"):
        assert {
            "val_accuracy",
            "test_accuracy",
            "parameters",
            "nonzero_parameters",
            "onnx_bytes",
            "ms_per_batch8",
        } <= set(report[side])
    assert report["after"]["parameters"] < report["before"]["parameters"]
    assert report["after"]["onnx_bytes"] < report["before"]["onnx_bytes"]
    before, after = report["before"], report["after"]
    assert report["val_metric_drop"] == pytest.approx(before["val_accuracy"] - after["val_accuracy"])
    assert report["metric_drop"] == pytest.approx(before["test_accuracy"] - after["test_accuracy"])
    assert report["speedup"] == pytest.approx(before["ms_per_batch8"] / after["ms_per_batch8"])
    wins = (
        report["speedup"] >= P.MIN_SPEEDUP
        or after["onnx_bytes"] <= (1 - P.MIN_SIZE_REDUCTION) * before["onnx_bytes"]
    )
    assert report["kept"] == (report["val_metric_drop"] <= 1.0 + 1e-9 and wins) and report[
        "reason"
    ].startswith("kept" if report["kept"] else "not kept")
    assert m.recipe["prune"]["amount"] == 0.3
    # the exported model is the one the rule chose
    assert m.files["model.onnx"].bytes == pytest.approx(
        (after if report["kept"] else before)["onnx_bytes"], rel=0.01
    )


@pytest.mark.parametrize(
    "build, backbone, x",
    [
        (_small_cnn_classifier, "small-cnn", (2, 1, 64, 101)),
        (_efficientnet_classifier, "efficientnet-lite0", (2, 3, 64, 64)),
    ],
)
def test_a_fresh_model_takes_the_pruned_weights(build, backbone, x):
    pruned = build()
    P.apply_structured(pruned, backbone, 0.5)
    fresh = P.resize_to_state_dict(build(), pruned.state_dict())
    fresh.load_state_dict(pruned.state_dict(), strict=True)
    x = torch.randn(*x)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), pruned(x))
