"""Ray Serve serving the same model: one replica, `@serve.batch` (its dynamic batching) in front of
the model, FastAPI ingress. The route is `/predict`; the body is `{"texts": [text]}` for a text
model, a multipart form with one `images` file for an image model.

    TUNESERVE_REPOSITORY=exported TUNESERVE_MODELS=intent python benchmarks/peers/rayserve_server.py PORT
"""

import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import ray
from fastapi import FastAPI, Request
from ray import serve

from benchmarks.peers.common import BATCH_WAIT_S, MAX_BATCH, classify_images, classify_texts, load_model

app = FastAPI()


@serve.deployment(num_replicas=1, max_ongoing_requests=1024)
@serve.ingress(app)
class Peer:
    def __init__(self) -> None:
        self.model = load_model()
        self.image = self.model.manifest.modality == "image"

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT_S)
    async def infer(self, items: list[Any]) -> list[Any]:
        return classify_images(self.model, items) if self.image else classify_texts(self.model, items)

    @app.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    async def predict(self, request: Request) -> dict[str, Any]:
        if self.image:
            form = await request.form()
            item = await form["images"].read()  # type: ignore[union-attr]
        else:
            item = (await request.json())["texts"][0]
        return {"predictions": [await self.infer(item)]}


if __name__ == "__main__":
    env = {k: v for k, v in os.environ.items() if k.startswith(("TUNESERVE_", "OMP_", "OPENBLAS_"))}
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, runtime_env={"env_vars": env})
    serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[1])})
    serve.run(Peer.bind(), route_prefix="/")
    while True:  # the benchmark stops the process group
        time.sleep(3600)
