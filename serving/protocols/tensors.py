"""Tasks as Open Inference Protocol tensors: what a task takes and answers, read off its request and
response models, and the protocol's JSON and binary tensor encodings.

Inputs: a file task takes its files as one BYTES tensor (the encoded file bytes: raw in binary
tensor data, base64 in JSON tensor data, which must be UTF-8 strings). A JSON task takes each list
field of its request model as a tensor — texts as BYTES (UTF-8), rows as BYTES (one JSON object
each), series as FP32 (NaN for a gap) — and its scalar fields, like a file task's options, as
request `parameters`. A list of objects whose keys the model knows (a table model's features) can
come instead as one typed tensor per key. Outputs: each field of a prediction becomes a tensor with
one row per input (`label` BYTES, `score` FP32, `scores` FP32 [n, classes], anything nested as JSON
BYTES); fields of the answer itself become tensors of their own (a forecast's `forecast` FP32 [h],
`quantiles` FP32 [h, q], embeddings FP32 [n, dimension]). The server's own pre- and post-processing apply exactly as on v1.
"""

from __future__ import annotations

import json
import math
import struct
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel

from serving.errors import RequestError
from serving.manifest import Signature
from serving.tasks import FileTask, ServingTask
from serving.tasks.tensor import datatype_of, is_dynamic

# OIP datatype → numpy dtype (BYTES are Python bytes in an object array)
DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
ANSWER_FIELDS = {"model", "version", "variant"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class InputSpec(TensorSpec):
    kind: str = "strings"  # strings | json | numbers | files | column | tensor: how elements become the request's values
    column_of: str = ""  # a column: the request's list field whose objects it fills (e.g. rows)


@dataclass(frozen=True)
class OutputSpec(TensorSpec):
    # the answer's results → this output as a flat row-major list of Python values, and its shape
    extract: Callable[[dict[str, Any]], tuple[list[Any], tuple[int, ...]]] = lambda results: ([], (0,))


# --- what a task takes ------------------------------------------------------------------------


def _union_args(annotation: Any) -> list[Any]:
    """X of Optional[X] / X | None; the annotation itself otherwise."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _list_item(annotation: Any) -> Any | None:
    """The element type of list[X] (also inside Optional; Annotated[X, ...] as X), else None."""
    for candidate in _union_args(annotation):
        if typing.get_origin(candidate) is list:
            (item,) = typing.get_args(candidate) or (Any,)
            return typing.get_args(item)[0] if typing.get_origin(item) is typing.Annotated else item
    return None


def _is_tensor(extra: Any) -> bool:
    """False for a field marked `json_schema_extra={"tensor": False}` (e.g. a filename v2 never sends)."""
    return not (isinstance(extra, dict) and extra.get("tensor") is False)


def input_specs(task: type[ServingTask]) -> list[InputSpec]:
    if issubclass(task, FileTask):
        return [InputSpec(task.file_field, "BYTES", (-1,), "files")]
    assert task.request_model is not None
    specs = []
    for name, field in task.request_model.model_fields.items():
        item = _list_item(field.annotation)
        if name == "model" or item is None:
            continue
        tensor = (
            (field.json_schema_extra or {}).get("tensor")
            if isinstance(field.json_schema_extra, dict)
            else None
        )
        if tensor == "FP32":
            specs.append(InputSpec(name, "FP32", (-1,), "numbers"))
        else:
            specs.append(InputSpec(name, "BYTES", (-1,), "strings" if item is str else "json"))
    return specs


def column_specs(task: ServingTask) -> list[InputSpec]:
    """Typed per-field tensors a model also takes in place of a list of objects (a table model's
    features instead of rows as JSON): numbers FP32 (NaN for missing), strings BYTES, booleans BOOL."""
    datatypes = {"number": "FP32", "string": "BYTES", "boolean": "BOOL"}
    return [
        InputSpec(key, datatypes[kind], (-1,), "column", field)
        for field, keys in task.item_fields().items()
        for key, kind in keys.items()
    ]


def parameter_names(task: type[ServingTask]) -> set[str]:
    """Request `parameters` the task reads: a file task's options, a JSON task's scalar fields (but
    those whose results v2 does not carry, marked `{"tensor": False}`, such as table explanations)."""
    if issubclass(task, FileTask) or task.request_model is None:
        return set(task.options)
    return {
        n
        for n, f in task.request_model.model_fields.items()
        if n != "model" and _list_item(f.annotation) is None and _is_tensor(f.json_schema_extra)
    }


# --- what a task answers ----------------------------------------------------------------------------


def _scalar_type(annotation: Any) -> str | None:
    args = [
        typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a
        for a in _union_args(annotation)
    ]
    if len(args) != 1:
        return None
    return {bool: "BOOL", int: "INT64", float: "FP32", str: "BYTES"}.get(args[0])


def _dict_value(annotation: Any) -> Any | None:
    if typing.get_origin(annotation) is dict:
        return typing.get_args(annotation)[1]
    return None


def _column(values: list[Any], datatype: str) -> list[Any]:
    """A flat column of Python values: BYTES as str (JSON for anything nested), numbers as they are."""
    if datatype == "BYTES":
        return [v if isinstance(v, str) else "" if v is None else json.dumps(v) for v in values]
    return values


def output_specs(task: type[ServingTask], labels: list[str]) -> list[OutputSpec]:
    """Output tensors of a model of this task; `labels` orders the columns of per-label dicts."""
    specs: list[OutputSpec] = []
    for name, field in task.response_model.model_fields.items():
        if name in ANSWER_FIELDS:
            continue
        item = _list_item(field.annotation)
        if name == "predictions" and isinstance(item, type) and issubclass(item, BaseModel):
            for key, sub in item.model_fields.items():
                if _is_tensor(sub.json_schema_extra):
                    specs.append(_prediction_field(key, sub.annotation, labels))
        else:
            specs.append(_answer_field(name, field.annotation, labels))
    return specs


def _prediction_field(key: str, annotation: Any, labels: list[str]) -> OutputSpec:
    """One field of every prediction, one row per input."""
    if _dict_value(annotation) is float:  # per-label scores: [n, labels]

        def scores(r: dict[str, Any]) -> tuple[list[Any], tuple[int, ...]]:
            rows = r["predictions"]
            return [p[key][label] for p in rows for label in labels], (len(rows), len(labels))

        return OutputSpec(key, "FP32", (-1, len(labels)), extract=scores)
    datatype = _scalar_type(annotation) or "BYTES"  # nested values travel as JSON
    return OutputSpec(
        key,
        datatype,
        (-1,),
        extract=lambda r: (_column([p[key] for p in r["predictions"]], datatype), (len(r["predictions"]),)),
    )


def _answer_field(name: str, annotation: Any, labels: list[str]) -> OutputSpec:
    """A field of the answer itself: a list (per input, or a series), a dict of series, a scalar."""
    item = _list_item(annotation)
    if item is not None and _list_item(item) is float:  # a vector per input (embeddings): [n, width]

        def rows(r: dict[str, Any]) -> tuple[list[Any], tuple[int, ...]]:
            vectors = r[name]
            return [v for row in vectors for v in row], (len(vectors), len(vectors[0]) if vectors else 0)

        return OutputSpec(name, "FP32", (-1, -1), extract=rows)
    if item is not None:
        datatype = _scalar_type(item) or "BYTES"
        return OutputSpec(
            name, datatype, (-1,), extract=lambda r: (_column(r[name], datatype), (len(r[name]),))
        )
    if _list_item(_dict_value(annotation)) is float:  # named series (quantiles): [length, names]

        def series(r: dict[str, Any]) -> tuple[list[Any], tuple[int, ...]]:
            columns = [r[name][label] for label in labels]
            return [v for row in zip(*columns) for v in row], (len(columns[0]) if columns else 0, len(labels))

        return OutputSpec(name, "FP32", (-1, len(labels)), extract=series)
    datatype = _scalar_type(annotation) or "BYTES"
    return OutputSpec(name, datatype, (1,), extract=lambda r: (_column([r[name]], datatype), (1,)))


# --- a model's own tensors (the `tensor` task) ---------------------------------------------------


def signature_specs(signature: Signature) -> tuple[list[InputSpec], list[OutputSpec]]:
    """The model's ONNX inputs and outputs as they are (dynamic dimensions as -1); each output is
    read from the answer's `outputs` (serving/tasks/tensor.py)."""

    def shape(dims: list[str | int]) -> tuple[int, ...]:
        return tuple(-1 if is_dynamic(d) else int(d) for d in dims)

    def output(name: str) -> Callable[[dict[str, Any]], tuple[list[Any], tuple[int, ...]]]:
        def extract(results: dict[str, Any]) -> tuple[list[Any], tuple[int, ...]]:
            tensor = next(t for t in results["outputs"] if t["name"] == name)
            return tensor["data"], tuple(tensor["shape"])

        return extract

    inputs = [InputSpec(s.name, datatype_of(s), shape(s.shape), "tensor") for s in signature.inputs]
    outputs = [
        OutputSpec(s.name, datatype_of(s), shape(s.shape), extract=output(s.name)) for s in signature.outputs
    ]
    return inputs, outputs


# --- encodings ----------------------------------------------------------------------------------


def decode_binary(raw: memoryview, datatype: str, name: str) -> list[bytes] | np.ndarray:
    """The binary tensor data extension: BYTES elements each prefixed by a 4-byte little-endian
    length (a list of bytes), other types as their little-endian values (an array)."""
    if datatype == "BYTES":
        out, offset = [], 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise RequestError(
                    f"input {name!r}: binary BYTES data ends inside an element's length prefix"
                )
            (size,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            if offset + size > len(raw):
                raise RequestError(
                    f"input {name!r}: a BYTES element of {size} bytes runs past its binary_data_size"
                )
            out.append(bytes(raw[offset : offset + size]))
            offset += size
        return out
    dtype = np.dtype(DTYPES[datatype]).newbyteorder("<")
    if len(raw) % dtype.itemsize:
        raise RequestError(f"input {name!r}: {len(raw)} bytes is not a whole number of {datatype} values")
    return np.frombuffer(raw, dtype=dtype)


def decode_json(data: Any, datatype: str, name: str) -> list[bytes] | np.ndarray:
    """JSON `data` (flat or nested, row-major) as flat values of `datatype` (BYTES as a list)."""
    flat = list(_flatten(data))
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise RequestError(f"input {name!r}: BYTES data must be strings")
        return [v.encode("utf-8", "surrogatepass") for v in flat]
    if datatype == "BOOL":
        if not all(isinstance(v, bool) for v in flat):
            raise RequestError(f"input {name!r}: BOOL data must be true or false")
        return np.array(flat, dtype=np.bool_)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
        raise RequestError(f"input {name!r}: {datatype} data must be numbers")
    if "INT" in datatype and not all(isinstance(v, int) for v in flat):  # 1.5 is no INT64: say so, not round
        raise RequestError(f"input {name!r}: {datatype} data must be integers")
    try:
        return np.array(flat, dtype=DTYPES[datatype])
    except (OverflowError, ValueError) as exc:
        raise RequestError(f"input {name!r}: {exc}") from None


def _flatten(data: Any) -> typing.Iterator[Any]:
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item)
    else:
        yield data


def encode_binary(values: Any, datatype: str) -> bytes:
    """Flat values (a list, or an array) as binary tensor data: BYTES elements (str or bytes) each
    prefixed by its 4-byte little-endian length, numbers as little-endian values."""
    if datatype == "BYTES":
        encoded = [v.encode() if isinstance(v, str) else bytes(v) for v in values]
        return b"".join(struct.pack("<I", len(v)) + v for v in encoded)
    return np.ascontiguousarray(values, dtype=np.dtype(DTYPES[datatype]).newbyteorder("<")).tobytes()


def encode_json(values: list[Any], datatype: str) -> list[Any]:
    """Flat values as JSON tensor data (non-finite floats, which JSON cannot hold, as null)."""
    if datatype in ("FP16", "FP32", "FP64"):
        return [v if math.isfinite(v) else None for v in values]
    return values
