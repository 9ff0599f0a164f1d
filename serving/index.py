"""The search index of a semantic-search model: its documents, their unit-length embeddings and the
structure that finds a query's nearest ones, stored in the model folder beside the ONNX files.

Files (named by a digest of their contents, so a rebuild never overwrites what a running server or a
concurrent load still reads; the manifest names the current ones under `preprocessing`, so they are
listed with their sha256 in its `files` and checked like every other file the server opens):

    documents.<digest>.jsonl   one {"id", "text", "metadata"} per line, in index order
    vectors.<digest>.npy       float32 [documents, dimension], exact search (fewer than `exact_below`)
    hnsw.<digest>.faiss        faiss IndexHNSWFlat over inner products (from `exact_below` documents on)

Exact search is one matrix product (numpy) and a partial sort; from `exact_below` documents on, an
HNSW graph (faiss) answers in well under a millisecond where the product grows with the collection.
A metadata `filter` selects documents by equality on every key it names; when it leaves fewer than
`exact_below` candidates they are searched exactly, otherwise the graph is searched with the
selection as an ID selector (faiss skips the others while walking it).

Embeddings are inner-product ready (the ONNX graph normalises them), so a score is a cosine
similarity in [-1, 1]. Torch-free: the server reads this, and `tuneserve index` builds with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.errors import InputError

log = logging.getLogger(__name__)

# Below this many candidates search is exact: a matrix product is never wrong and still cheap; above
# it the graph's latency stays flat while the product grows with the collection
# (benchmarks/results/faq_search_scale.json compares both at 100,000 documents).
EXACT_BELOW = 20_000
FILES = ("documents", "vectors", "hnsw")  # the `preprocessing` keys naming index files


@dataclass(frozen=True)
class IndexOptions:
    """How an index is built: the size from which the HNSW graph is used, and its parameters (faiss'
    names: M links per node, efConstruction and efSearch candidate lists)."""

    exact_below: int = EXACT_BELOW
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Hit:
    position: int
    score: float


@dataclass
class SearchIndex:
    ids: list[str]
    texts: list[str]
    metadata: list[dict[str, Any]]
    vectors: np.ndarray | None  # exact kind: [n, dim] float32
    graph: Any = None  # hnsw kind: a faiss IndexHNSWFlat
    options: IndexOptions = field(default_factory=IndexOptions)
    # metadata key → JSON of a value → positions holding it (what `filter` selects with)
    by_value: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        groups: dict[str, dict[str, list[int]]] = {}
        for position, meta in enumerate(self.metadata):
            for key, value in meta.items():
                groups.setdefault(key, {}).setdefault(_value_key(value), []).append(position)
        self.by_value = {
            key: {v: np.asarray(p, dtype=np.int64) for v, p in values.items()}
            for key, values in groups.items()
        }

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def kind(self) -> str:
        return "exact" if self.graph is None else "hnsw"

    @property
    def metadata_keys(self) -> list[str]:
        return sorted(self.by_value)

    # --- loading ---------------------------------------------------------------------------------

    @classmethod
    def load(cls, folder: Path, config: dict[str, Any], threads: int = 1) -> SearchIndex:
        """The index a manifest's `preprocessing` names, from its model folder."""
        ids, texts, metadata = read_documents_file(Path(folder) / config["documents"])
        options = IndexOptions(**config.get("index", {}).get("options", {}))
        if config.get("hnsw"):
            faiss = _faiss(threads)
            graph = faiss.read_index(str(Path(folder) / config["hnsw"]))
            if graph.ntotal != len(ids):
                raise ValueError(f"{config['hnsw']}: {graph.ntotal} vectors for {len(ids)} documents")
            return cls(ids, texts, metadata, None, graph, options)
        vectors = np.load(Path(folder) / config["vectors"], allow_pickle=False)
        if vectors.ndim != 2 or vectors.shape[0] != len(ids):
            raise ValueError(f"{config['vectors']}: shape {vectors.shape} for {len(ids)} documents")
        return cls(ids, texts, metadata, np.ascontiguousarray(vectors, dtype=np.float32), None, options)

    # --- searching -------------------------------------------------------------------------------

    def check_filter(self, where: dict[str, Any] | None, field_name: str = "filter") -> None:
        """Refuse keys no document has (a typo would otherwise find nothing, silently)."""
        for key in where or {}:
            if key not in self.by_value:
                known = ", ".join(self.metadata_keys) or "none"
                raise InputError(f"{field_name}: unknown metadata key {key!r}; the documents have: {known}")

    def selection(self, where: dict[str, Any] | None) -> np.ndarray | None:
        """Positions whose metadata equal every value of `where` (None: every document)."""
        if not where:
            return None
        self.check_filter(where)
        chosen: np.ndarray | None = None
        for key, value in where.items():
            positions = self.by_value[key].get(_value_key(value), np.empty(0, dtype=np.int64))
            chosen = positions if chosen is None else np.intersect1d(chosen, positions, assume_unique=True)
        return chosen

    def search(self, queries: np.ndarray, k: int, where: dict[str, Any] | None = None) -> list[list[Hit]]:
        """The `k` best documents of each query (rows of unit vectors), best first; ties by position."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        chosen = self.selection(where)
        if chosen is not None and len(chosen) == 0:
            return [[] for _ in range(len(queries))]
        if self.graph is None:
            return _exact(queries, self.vectors, k, chosen)  # type: ignore[arg-type]  # exact kind holds vectors
        if chosen is not None and len(chosen) < self.options.exact_below:
            return _exact(queries, self.graph.reconstruct_batch(chosen), k, chosen)
        return self._graph_search(queries, k, chosen)

    def _graph_search(self, queries: np.ndarray, k: int, chosen: np.ndarray | None) -> list[list[Hit]]:
        import faiss

        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # SWIG class, not in faiss' stubs
        params.efSearch = max(self.options.ef_search, k)
        if chosen is not None:
            selector = faiss.IDSelectorBatch(chosen)
            params.sel = selector
        scores, positions = self.graph.search(queries, min(k, len(self)), params=params)
        return [
            _ranked([Hit(int(p), float(s)) for p, s in zip(row_p, row_s) if p >= 0])
            for row_p, row_s in zip(positions, scores)
        ]

    def hits(self, found: list[Hit]) -> list[dict[str, Any]]:
        """Hits as the answer shows them."""
        return [
            {
                "id": self.ids[h.position],
                "score": h.score,
                "text": self.texts[h.position],
                "metadata": self.metadata[h.position],
            }
            for h in found
        ]


def _ranked(hits: list[Hit]) -> list[Hit]:
    return sorted(hits, key=lambda h: (-h.score, h.position))


def _exact(queries: np.ndarray, vectors: np.ndarray, k: int, chosen: np.ndarray | None) -> list[list[Hit]]:
    """One matrix product and a partial sort per query; `chosen` maps rows of `vectors` to positions."""
    scores = queries @ (vectors if chosen is None or len(vectors) == len(chosen) else vectors[chosen]).T
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    out = []
    for row, columns in zip(scores, top):
        positions = columns if chosen is None else chosen[columns]
        out.append(_ranked([Hit(int(p), float(row[c])) for p, c in zip(positions, columns)]))
    return out


def _value_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _faiss(threads: int) -> Any:
    import faiss

    faiss.omp_set_num_threads(max(1, threads))
    return faiss


# --- files -------------------------------------------------------------------------------------------


def _flat_metadata(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, (str, int, float, bool))) for k, v in value.items()
    ):
        raise ValueError(f'{where}: "metadata" must be an object of strings, numbers and booleans')
    return value


def jsonl_objects(path: Path) -> Iterator[tuple[str, Any]]:
    """(`file:line`, parsed value) for each non-blank line of a JSONL file; invalid JSON names its line."""
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{n}", json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None


def read_documents(path: Path) -> tuple[list[Document], list[list[str]]]:
    """Documents of a JSONL file, one `{"id", "text", "metadata"?, "queries"?}` per line (metadata
    flat: strings, numbers, booleans; `queries`: example questions, which training uses), and each
    one's questions. Errors name the file and line."""
    documents: list[Document] = []
    questions: list[list[str]] = []
    ids: set[str] = set()
    for where, obj in jsonl_objects(path):
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not obj["text"].strip():
            raise ValueError(f'{where}: each line needs "text" (a non-empty string)')
        doc_id = obj.get("id")
        if not isinstance(doc_id, (str, int)) or isinstance(doc_id, bool) or str(doc_id) == "":
            raise ValueError(f'{where}: each line needs "id" (a string or an integer)')
        doc_id = str(doc_id)
        if doc_id in ids:
            raise ValueError(f"{where}: id {doc_id!r} given twice")
        ids.add(doc_id)
        queries = obj.get("queries", [])
        if not isinstance(queries, list) or not all(isinstance(q, str) and q.strip() for q in queries):
            raise ValueError(f'{where}: "queries" must be a list of non-empty strings')
        unknown = sorted(set(obj) - {"id", "text", "metadata", "queries"})
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; expected id, text, metadata, queries")
        documents.append(Document(doc_id, obj["text"], _flat_metadata(obj.get("metadata"), where)))
        questions.append(queries)
    if not documents:
        raise ValueError(f"{path}: no documents")
    return documents, questions


def read_documents_file(path: Path) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    ids, texts, metadata = [], [], []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            ids.append(doc["id"])
            texts.append(doc["text"])
            metadata.append(doc.get("metadata") or {})
    return ids, texts, metadata


def write_index(
    folder: Path,
    documents: list[Document],
    vectors: np.ndarray,
    options: IndexOptions,
    threads: int = 1,
    source: str = "",
) -> dict[str, Any]:
    """Write an index's files into `folder`; returns the `preprocessing` entries naming them."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(vectors) != len(documents) or len(documents) == 0:
        raise ValueError(f"{len(vectors)} vectors for {len(documents)} documents")
    lines = "".join(
        json.dumps({"id": d.id, "text": d.text, "metadata": d.metadata}, ensure_ascii=False) + "\n"
        for d in documents
    ).encode()
    digest = hashlib.sha256(lines + vectors.tobytes()).hexdigest()[:16]
    started = time.perf_counter()
    entries: dict[str, Any] = {"documents": f"documents.{digest}.jsonl", "vectors": None, "hnsw": None}
    (folder / entries["documents"]).write_bytes(lines)
    if len(documents) < options.exact_below:
        entries["vectors"] = f"vectors.{digest}.npy"
        np.save(folder / entries["vectors"], vectors, allow_pickle=False)
        kind = "exact"
    else:
        faiss = _faiss(threads)
        graph = faiss.IndexHNSWFlat(vectors.shape[1], options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = options.ef_construction
        graph.add(vectors)
        entries["hnsw"] = f"hnsw.{digest}.faiss"
        faiss.write_index(graph, str(folder / entries["hnsw"]))
        kind = "hnsw"
    entries["index"] = {
        "kind": kind,
        "documents": len(documents),
        "dimension": int(vectors.shape[1]),
        "options": options.__dict__,
        "metadata_keys": sorted({k for d in documents for k in d.metadata}),
        "source": source,
        "build_seconds": round(time.perf_counter() - started, 3),
    }
    return entries


def rebuild_index(
    model_dir: Path,
    documents: list[Document],
    threads: int = 1,
    source: str = "",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Re-embed `documents` with the model's fp32 variant and replace its index without retraining:
    the new files are written beside the old ones, then the manifest is swapped in one rename (a
    server reloading meanwhile sees the old or the new manifest, each with its files), then the old
    files are removed. Returns the new index's description (the manifest's `preprocessing.index`)."""
    from serving.manifest import MANIFEST_FILE, FileEntry, load_manifest, sha256_file, verify_files
    from serving.processing.text import TextPreprocessor
    from serving.sessions import create_session

    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir, verify=False)
    if "documents" not in manifest.preprocessing:
        raise ValueError(f"model {manifest.name!r} is a {manifest.task} model: it has no search index")
    fp32 = manifest.variants["fp32"].file
    verify_files(model_dir, manifest, only={fp32, manifest.preprocessing["tokenizer"]})
    session, _ = create_session(model_dir / fp32, threads, ["CPUExecutionProvider"])
    embedder = TextEmbedder(session, TextPreprocessor.from_config(model_dir, manifest.preprocessing))
    texts = [d.text for d in documents]
    chunks = []
    for start in range(0, len(texts), 256):
        chunks.append(embedder.embed(texts[start : start + 256])[0])
        if progress is not None:
            progress(min(start + 256, len(texts)), len(texts))
    options = IndexOptions(**manifest.preprocessing.get("index", {}).get("options", {}))
    old = {name for key in FILES if (name := manifest.preprocessing.get(key))}
    entries = write_index(model_dir, documents, np.concatenate(chunks), options, threads, source)
    new = {name for key in FILES if (name := entries[key])}
    manifest.preprocessing.update(entries)
    for name in old - new:
        manifest.files.pop(name, None)
    for name in new:
        path = model_dir / name
        manifest.files[name] = FileEntry(bytes=path.stat().st_size, sha256=sha256_file(path))
    with tempfile.NamedTemporaryFile("w", dir=model_dir, prefix=".manifest.", delete=False) as tmp:
        tmp.write(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    os.replace(tmp.name, model_dir / MANIFEST_FILE)
    for name in old - new:
        (model_dir / name).unlink(missing_ok=True)
    return entries["index"]


class TextEmbedder:
    """Texts → unit-length embeddings with a text model's ONNX session (the graph pools and
    normalises), tokenised in buckets of similar length so short texts do not pay for long ones."""

    def __init__(self, session: Any, preprocessor: Any, bucket_size: int = 16) -> None:
        self.session = session
        self.preprocessor = preprocessor
        self.bucket_size = bucket_size
        self.input_names = {i.name for i in session.get_inputs()}

    def embed(self, texts: list[str]) -> tuple[np.ndarray, list[bool]]:
        """[len(texts), dimension] float32, and per text whether it was cut to the model's window."""
        out: np.ndarray | None = None
        truncated = [False] * len(texts)
        for positions, batch in self.preprocessor.encode_bucketed(texts, self.bucket_size):
            feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
            (vectors,) = self.session.run(None, {k: v for k, v in feeds.items() if k in self.input_names})
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[positions] = vectors
            for position, cut in zip(positions, batch.truncated):
                truncated[position] = cut
        return (out if out is not None else np.empty((0, 0), dtype=np.float32)), truncated
