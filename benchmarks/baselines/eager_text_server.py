"""The baseline to beat: the server a typical fine-tuning tutorial ends with.

The same fine-tuned checkpoint (weights taken from the model's TorchScript file) in PyTorch eager,
tokenised with transformers, one request per forward pass, no batching, no ONNX — behind the same
`POST /v1/text/classify` contract. Run: python benchmarks/baselines/eager_text_server.py exported/intent --port 3100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from transformers import PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from serving.manifest import load_manifest
from training.backbones import get_backbone
from training.recipe import Recipe
from training.tasks import get_task


def load(model_dir: Path):
    manifest = load_manifest(model_dir)
    recipe = Recipe.model_validate(manifest.recipe)
    model = get_task(manifest.task)(recipe, get_backbone(recipe.backbone)).build_model(manifest.labels)
    missing, _ = model.load_state_dict(torch.jit.load(str(model_dir / "model.ts")).state_dict(), strict=False)
    assert not missing, missing
    model.eval()
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"), pad_token="[PAD]")
    return manifest, model, tokenizer


def create_app(model_dir: Path) -> Starlette:
    manifest, model, tokenizer = load(model_dir)

    def classify(request: Request) -> JSONResponse:  # sync, as tutorials write it: runs in a thread pool
        import anyio.from_thread

        body = anyio.from_thread.run(request.json)
        inputs = tokenizer(body["texts"], padding=True, truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            probs = torch.softmax(model(inputs["input_ids"], inputs["attention_mask"]), dim=-1)
        predictions = []
        for row in probs.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            predictions.append(
                {
                    "label": manifest.labels[best],
                    "score": row[best],
                    "scores": dict(zip(manifest.labels, row)),
                }
            )
        return JSONResponse({"model": manifest.name, "version": manifest.version, "predictions": predictions})

    def ready(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/v1/text/classify", classify, methods=["POST"]), Route("/readyz", ready)])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--port", type=int, default=3100)
    args = ap.parse_args()
    uvicorn.run(create_app(args.model_dir), host="127.0.0.1", port=args.port, log_level="warning")
