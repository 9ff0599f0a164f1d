"""A plain FastAPI app on uvicorn, one ONNX Runtime call per request (no batching), the model call
off the event loop in FastAPI's thread pool: what a team writes by hand. The route is `/predict`;
the body is `{"texts": [text]}` for a text model, a multipart form with one `images` file for an
image model.

    TUNESERVE_REPOSITORY=exported TUNESERVE_MODELS=intent python benchmarks/peers/fastapi_server.py PORT
"""

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import uvicorn
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

from benchmarks.peers.common import classify_images, classify_texts, load_model

app = FastAPI()
MODEL = load_model()
IMAGE = MODEL.manifest.modality == "image"


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/predict")
async def predict(request: Request) -> dict[str, Any]:
    if IMAGE:
        form = await request.form()
        data = await form["images"].read()  # type: ignore[union-attr]
        return {"predictions": await run_in_threadpool(classify_images, MODEL, [data])}
    text = (await request.json())["texts"][0]
    return {"predictions": await run_in_threadpool(classify_texts, MODEL, [text])}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
