"""The BentoML-native way to serve the same text model: a `@bentoml.api(batchable=True)` method whose
batches BentoML's own adaptive batcher forms, calling the same task's `run` (tokenise, ONNX Runtime,
answers) as the tuneserve route. Compared by benchmarks/route_styles.py.

    TUNESERVE_REPOSITORY=exported TUNESERVE_MODELS=intent bentoml serve benchmarks.baselines.batchable_text_service:BatchableText
"""

from __future__ import annotations

import bentoml

from serving.settings import Settings

SETTINGS = Settings()


@bentoml.service(
    name="batchable-text",
    workers=1,
    traffic={"timeout": SETTINGS.timeout_s, "max_concurrency": SETTINGS.max_concurrency},
    logging={"access": {"enabled": False}},
    tracing={"excluded_urls": ["/classify"]},
)
class BatchableText:
    def __init__(self) -> None:
        from serving.runtime import Runtime

        (self.model,) = Runtime(SETTINGS).models.values()

    @bentoml.api(
        batchable=True, max_batch_size=SETTINGS.max_batch, max_latency_ms=int(SETTINGS.timeout_s * 1000)
    )
    def classify(self, texts: list[str]) -> list[dict]:
        return self.model.task.run(texts)
