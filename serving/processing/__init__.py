"""Pre- and post-processing, shared byte-for-byte by training and serving (numpy, OpenCV, tokenizers,
soundfile). Names are loaded on first use, so importing one module (e.g. `postprocess`) does not
load OpenCV or the tokenizers: the service's parent process imports the task registry and must
stay light."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ImageError": "image",
    "ImagePreprocessor": "image",
    "decode_image": "image",
    "softmax": "postprocess",
    "top_k": "postprocess",
    "top_label": "postprocess",
    "TextBatch": "text",
    "TextPreprocessor": "text",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'serving.processing' has no attribute {name!r}")
    return getattr(importlib.import_module(f"serving.processing.{_EXPORTS[name]}"), name)


__all__ = list(_EXPORTS)
