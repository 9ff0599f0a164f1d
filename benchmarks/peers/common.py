"""What every peer server shares: the same exported model, opened by tuneserve's own runtime, and the
same task code for pre- and post-processing (tokenise, ONNX Runtime, answers; decode and resize for
images). What differs between the servers is only how requests reach that code: the peer's HTTP
stack, its batching and its workers. The model is named by TUNESERVE_REPOSITORY and
TUNESERVE_MODELS (one model)."""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

MAX_BATCH = 64  # what each peer's batcher may merge (tuneserve's own default for text)
BATCH_WAIT_S = 0.002  # how long a peer's batcher waits for more (tuneserve's max_wait_ms)


def load_model() -> Any:
    """The one model of the repository (TUNESERVE_MODELS), loaded as tuneserve loads it."""
    from serving.runtime import Runtime
    from serving.settings import Settings

    (model,) = Runtime(Settings()).models.values()
    return model


def classify_texts(model: Any, texts: list[str]) -> list[dict[str, Any]]:
    """One batch of texts → one answer each (tokenise, one ONNX Runtime call, softmax, labels)."""
    return model.task.run(texts)


def classify_images(model: Any, files: list[bytes]) -> list[dict[str, Any]]:
    """One batch of uploaded image files → top-5 labels each: decode (EXIF applied), resize and
    normalise as the model's manifest says, one ONNX Runtime call, softmax, top 5."""
    import numpy as np

    from serving.processing.postprocess import top_k

    outputs = model.task.run([model.task.prepare_file(data) for data in files])
    return top_k(np.stack(outputs), model.manifest.labels, 5)
