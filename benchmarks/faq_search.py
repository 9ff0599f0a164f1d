"""Search quality on the FAQ's held-out questions (phrasings the fine-tune never saw): the fine-tuned
`faq-search` model as served (its index embedded by the fp32 model; questions by fp32, and by INT8 as
the CPU serves them when INT8 is the default), the frozen all-MiniLM-L6-v2 it started from (same
pooling and normalisation, no fine-tuning), and BM25 (bm25s) over the same documents. Every method
ranks all documents for every question: recall@1/5/10 and MRR. Also the ONNX Runtime time to embed
a question, fp32 vs INT8, on this machine.

Writes benchmarks/results/faq_search.{json,md}. Run: `python benchmarks/faq_search.py` after
`tuneserve train faq-search` (needs the train and dev extras: torch for the frozen encoder, bm25s).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import timed, write_results
from serving.index import TextEmbedder
from serving.manifest import load_manifest
from serving.processing.text import TextPreprocessor
from serving.sessions import create_session
from training.data.faq import load_retrieval_data
from training.tasks.semantic_search import rank_metrics, retrieval_metrics


def ranked_metrics(questions: np.ndarray, documents: np.ndarray, relevant: list[int]) -> dict:
    outputs = np.concatenate([questions, documents])
    targets = np.array(relevant + [-1 - i for i in range(len(documents))])
    return retrieval_metrics(outputs, targets)


def bm25_metrics(questions: list[str], documents: list[str], relevant: list[int]) -> dict:
    """BM25 scores of every document for every question, ranked like the embeddings."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(documents, stopwords="en", show_progress=False), show_progress=False)
    tokens = bm25s.tokenize(questions, stopwords="en", show_progress=False)
    positions, scores = retriever.retrieve(tokens, k=len(documents), show_progress=False)
    full = np.zeros((len(questions), len(documents)), dtype=np.float32)
    np.put_along_axis(full, positions, scores, axis=1)
    own = full[np.arange(len(questions)), relevant]
    return rank_metrics((full > own[:, None]).sum(axis=1))


def frozen_vectors(texts: list[str], preprocessor: TextPreprocessor) -> np.ndarray:
    import torch

    from training.backbones import get_backbone
    from training.tasks.semantic_search import SentenceEncoder

    model = SentenceEncoder(get_backbone("minilm-l6").load()).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            batch = preprocessor.encode(texts[i : i + 64])
            out.append(
                model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)).numpy()
            )
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", default=str(ROOT / "exported"))
    ap.add_argument("--model", default="faq-search")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    folder = Path(args.repository) / args.model
    manifest = load_manifest(folder)
    data_config = manifest.recipe["data"]
    if not str(data_config["source"]).startswith("generated:faq"):
        raise SystemExit(
            f"{args.model} was not built from the generated FAQ; this benchmark reads its test split"
        )
    data = load_retrieval_data(
        data_config["source"], data_config["val_fraction"], data_config["test_fraction"], data_config["seed"]
    )
    questions = [q.text for q in data.test]
    relevant = [q.document for q in data.test]
    documents = [d.text for d in data.documents]
    p = manifest.preprocessing
    index_vectors = np.load(folder / p["vectors"])
    assert len(index_vectors) == len(documents), "the index is not the FAQ (rebuilt with tuneserve index?)"
    preprocessor = TextPreprocessor.from_config(folder, p)

    embedders, rows, speed = {}, {}, {}
    for variant, entry in manifest.variants.items():
        session, _ = create_session(folder / entry.file, args.threads, ["CPUExecutionProvider"])
        embedders[variant] = TextEmbedder(session, preprocessor)
    fp32_questions = embedders["fp32"].embed(questions)[0]
    rows["fine-tuned, fp32 (GPU, and CPU when fp32 is served)"] = ranked_metrics(
        fp32_questions, index_vectors, relevant
    )
    if "int8" in embedders:
        int8_questions = embedders["int8"].embed(questions)[0]
        rows["fine-tuned, INT8 questions, fp32 index (CPU when INT8 is served)"] = ranked_metrics(
            int8_questions, index_vectors, relevant
        )
        rows["fine-tuned, INT8 questions and INT8 documents (what the INT8 gate measures)"] = ranked_metrics(
            int8_questions, embedders["int8"].embed(documents)[0], relevant
        )
    frozen = frozen_vectors(questions + documents, preprocessor)
    rows["all-MiniLM-L6-v2, frozen"] = ranked_metrics(
        frozen[: len(questions)], frozen[len(questions) :], relevant
    )
    rows["BM25 (bm25s)"] = bm25_metrics(questions, documents, relevant)

    for variant, embedder in embedders.items():
        for batch in (1, 8):
            chunk = questions[:batch]
            speed[f"{variant}_batch{batch}_ms"] = (
                timed(lambda e=embedder, c=chunk: e.embed(c), args.seconds) * 1000
            )
    int8_speedup = speed["fp32_batch8_ms"] / speed["int8_batch8_ms"] if "int8_batch8_ms" in speed else None

    report = {
        "machine": {
            "cores": os.cpu_count(),
            "threads": args.threads,
            "processor": platform.processor() or platform.machine(),
        },
        "model": args.model,
        "served_cpu": manifest.default_variant["cpu"],
        "default_reason": manifest.default_reason,
        "documents": len(documents),
        "questions": len(questions),
        "methods": rows,
        "embed_ms": speed,
        "int8_speedup_batch8": int8_speedup,
        "build": {k: manifest.build.get(k) for k in ("seconds", "steps", "train_examples")},
    }
    lines = [
        "# FAQ search quality",
        "",
        f"{len(questions)} held-out user questions (sentence frames never seen in training) against "
        f"{len(documents)} FAQ entries; every method ranks every entry. Model `{args.model}`, "
        f"served on the CPU: {manifest.default_variant['cpu']} ({manifest.default_reason}).",
        "",
        "| method | recall@1 | recall@5 | recall@10 | MRR |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {m['recall_at_1']:.3f} | {m['recall_at_5']:.3f} | {m['recall_at_10']:.3f} | {m['mrr']:.3f} |"
            for name, m in rows.items()
        ),
        "",
        f"Embedding questions with ONNX Runtime on {os.cpu_count()} cores ({args.threads} threads), ms per call:",
        "",
        "| variant | batch 1 | batch 8 |",
        "|---|---|---|",
        *(f"| {v} | {speed[f'{v}_batch1_ms']:.2f} | {speed[f'{v}_batch8_ms']:.2f} |" for v in embedders),
        "",
        f"INT8 speed-up at batch 8: {int8_speedup:.2f}x." if int8_speedup else "No INT8 variant.",
        "",
    ]
    write_results("faq_search", report, lines)


if __name__ == "__main__":
    main()
