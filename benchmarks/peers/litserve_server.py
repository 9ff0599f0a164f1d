"""LitServe serving the same model with its own dynamic batching (`max_batch_size`, `batch_timeout`),
one worker. The route is LitServe's `/predict`; the body is `{"texts": [text]}` for a text model,
a multipart form with one `images` file for an image model.

    TUNESERVE_REPOSITORY=exported TUNESERVE_MODELS=intent python benchmarks/peers/litserve_server.py PORT
"""

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import litserve as ls

from benchmarks.peers.common import BATCH_WAIT_S, MAX_BATCH, classify_images, classify_texts, load_model


class PeerAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.model = load_model()
        self.image = self.model.manifest.modality == "image"

    def decode_request(self, request):  # type: ignore[no-untyped-def]  # unannotated: LitServe then passes the parsed body
        if self.image:
            return request["images"].file.read()  # a multipart form's UploadFile
        return request["texts"][0]

    def batch(self, inputs: list[Any]) -> list[Any]:
        return inputs

    def predict(self, batch: list[Any]) -> list[Any]:
        return classify_images(self.model, batch) if self.image else classify_texts(self.model, batch)

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output

    def encode_response(self, output: Any) -> dict[str, Any]:
        return {"predictions": [output]}


if __name__ == "__main__":
    api = PeerAPI(max_batch_size=MAX_BATCH, batch_timeout=BATCH_WAIT_S)
    ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=30).run(
        host="127.0.0.1", port=int(sys.argv[1]), generate_client_file=False, log_level="warning"
    )
