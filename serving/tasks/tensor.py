"""The generic `tensor` task: a model with no declared task (an imported ONNX file), served on the
Open Inference Protocol only, its own input and output tensors in and out.

The signature in the manifest is the contract: every input must come with the model's dtype, rank
and fixed dimensions, or the request is refused with a 400 naming the input. When every input's
first axis is dynamic, that axis is the batch: each row is one item of the model's batcher, so rows
of concurrent requests share one ONNX Runtime call. Rows whose other dimensions differ (sequences of
different lengths) are padded to the longest with the value `preprocessing.pad` gives for that
input, and each output dimension named like a padded input dimension is cut back to the row's own
length, so a row's answer does not depend on its batch-mates; without a pad value, rows of
different shapes run in separate calls. A model whose first axes are fixed runs request by request.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from serving.errors import InputError, RequestError
from serving.manifest import Manifest, TensorSpec
from serving.settings import Settings
from serving.tasks.base import Answer, Sample, ServingTask

# manifest dtype (numpy's name) → the Open Inference Protocol's datatype
DATATYPES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}


def is_dynamic(dim: str | int) -> bool:
    return isinstance(dim, str) or dim <= 0


def datatype_of(spec: TensorSpec) -> str:
    try:
        return DATATYPES[spec.dtype]
    except KeyError:
        raise ValueError(
            f"tensor {spec.name!r} has dtype {spec.dtype}; served dtypes: {', '.join(DATATYPES)}"
        ) from None


@dataclass
class TensorRequest:
    """The model's inputs by name, each an array of the request's shape."""

    model: str | None
    inputs: dict[str, np.ndarray]


Row = dict[str, np.ndarray]  # one batch row (or, unbatched, one whole request) of every input
Outcome = Row | InputError  # a row's outputs, or why the model refused that row


class TensorAnswer(Answer):
    outputs: list[dict[str, Any]] = Field(
        description="each output tensor: name, datatype, shape and its values flattened row-major"
    )


class TensorTask(ServingTask[list[Row], Row, Outcome]):
    name = "tensor"
    route = ""  # none: the Open Inference Protocol only (/v2/models/<name>/infer)
    client_method = ""
    summary = "Raw tensors in and out, as the model's signature says"
    default_model = ""
    response_model = TensorAnswer

    def __init__(self, model_dir: Path, manifest: Manifest, session: Any, settings: Settings) -> None:
        super().__init__(model_dir, manifest, session, settings)
        self.inputs = manifest.signature.inputs
        self.outputs = manifest.signature.outputs
        for spec in self.inputs + self.outputs:
            datatype_of(spec)  # a model with a tensor type the protocol cannot carry is refused at load
        self.pad: dict[str, float] = {
            k: float(v) for k, v in (manifest.preprocessing.get("pad") or {}).items()
        }
        self.batched = bool(self.inputs) and all(
            len(s.shape) > 0 and is_dynamic(s.shape[0]) for s in self.inputs
        )
        # output axis → the input axis whose length it follows (same dimension name): cut after padding
        named = {
            d: (s.name, axis)
            for s in self.inputs
            for axis, d in enumerate(s.shape)
            if axis > 0 and isinstance(d, str)
        }
        self.follows = {
            o.name: {axis: named[d] for axis, d in enumerate(o.shape) if axis > 0 and d in named}
            for o in self.outputs
        }

    def check(self, request: TensorRequest) -> None:
        expected = {s.name for s in self.inputs}
        missing, unknown = expected - set(request.inputs), set(request.inputs) - expected
        if unknown:
            raise RequestError(f"unknown input(s) {sorted(unknown)}; the model takes {sorted(expected)}")
        if missing:
            raise RequestError(f"missing input(s) {sorted(missing)}; the model takes {sorted(expected)}")
        rows = set()
        for spec in self.inputs:
            array = request.inputs[spec.name]
            if array.dtype != np.dtype(spec.dtype):
                raise RequestError(
                    f"input {spec.name!r}: datatype {DATATYPES.get(array.dtype.name, array.dtype.name)} "
                    f"does not match the model's {datatype_of(spec)}"
                )
            if array.ndim != len(spec.shape) or any(
                not is_dynamic(d) and d != n for d, n in zip(spec.shape, array.shape)
            ):
                raise RequestError(
                    f"input {spec.name!r}: shape {list(array.shape)} does not match the model's "
                    f"{[d if not is_dynamic(d) else -1 for d in spec.shape]}"
                )
            if spec.dtype.startswith("float") and not np.isfinite(array).all():
                raise RequestError(f"input {spec.name!r}: holds NaN or infinity")
            rows.add(array.shape[0] if self.batched else 1)
        if len(rows) > 1:
            raise RequestError(f"inputs differ in their first (batch) dimension: {sorted(rows)}")
        if self.batched and rows == {0}:
            raise RequestError("inputs hold no rows")
        if self.batched and max(rows) > self.settings.max_items:
            raise RequestError(
                f"{max(rows)} rows; the limit is {self.settings.max_items} per request", status=413
            )

    def prepare(self, request: TensorRequest) -> list[Row]:
        if not self.batched:
            return [dict(request.inputs)]
        count = next(iter(request.inputs.values())).shape[0]
        return [{name: array[i : i + 1] for name, array in request.inputs.items()} for i in range(count)]

    def items(self, prepared: list[Row]) -> list[Row]:
        return prepared

    def run(self, rows: list[Row]) -> list[Outcome]:
        if not self.batched:
            return [self._alone(row) for row in rows]
        groups: dict[tuple, list[int]] = {}  # rows that can share one call: same shapes, or padded
        for i, row in enumerate(rows):
            key = tuple((name, () if name in self.pad else array.shape[1:]) for name, array in row.items())
            groups.setdefault(key, []).append(i)
        out: list[Outcome] = [{} for _ in rows]
        for members in groups.values():
            batch = [rows[i] for i in members]
            merged = {name: self._stack(name, [r[name] for r in batch]) for name in batch[0]}
            try:
                results = self._call(merged)
            except InputError:  # one bad row must not fail its batch-mates: each row alone
                for i in members:
                    out[i] = self._alone(rows[i])
                continue
            for j, i in enumerate(members):
                out[i] = {name: self._cut(name, array[j : j + 1], rows[i]) for name, array in results.items()}
        return out

    def _alone(self, row: Row) -> Outcome:
        try:
            return self._call(row)
        except InputError as exc:
            return exc

    def _stack(self, name: str, arrays: list[np.ndarray]) -> np.ndarray:
        if name not in self.pad:
            return np.concatenate(arrays)
        longest = np.max([a.shape[1:] for a in arrays], axis=0)
        merged = np.full((len(arrays), *longest), self.pad[name], dtype=arrays[0].dtype)
        for i, a in enumerate(arrays):
            corner: tuple[Any, ...] = (i, *(slice(0, n) for n in a.shape[1:]))
            merged[corner] = a[0]
        return merged

    def _cut(self, output: str, array: np.ndarray, row: Row) -> np.ndarray:
        cuts = [slice(None)] * array.ndim
        for axis, (name, input_axis) in self.follows[output].items():
            if name in self.pad and axis < array.ndim:
                cuts[axis] = slice(0, row[name].shape[input_axis])
        return array[tuple(cuts)]

    def _call(self, feeds: Row) -> Row:
        try:
            values = self.session.run(None, feeds)
        except Exception as exc:  # values the signature cannot rule out (an index past a table's end)
            raise InputError(f"the model refused the input: {str(exc)[:300]}") from None
        return {o.name: np.asarray(v) for o, v in zip(self.outputs, values)}

    def answer(self, request: TensorRequest, prepared: list[Row], outputs: list[Outcome]) -> dict[str, Any]:
        refused = next((o for o in outputs if isinstance(o, InputError)), None)
        if refused is not None:
            raise RequestError(str(refused))
        rows = [o for o in outputs if not isinstance(o, InputError)]
        tensors = []
        for spec in self.outputs:
            parts = [o[spec.name] for o in rows]
            # the rows of one request share their shapes (one tensor), so their cut outputs do too
            array = np.concatenate(parts) if self.batched else parts[0]
            tensors.append(
                {
                    "name": spec.name,
                    "datatype": datatype_of(spec),
                    "shape": list(array.shape),
                    "data": array.ravel().tolist(),
                }
            )
        return {"outputs": tensors}

    @classmethod
    def samples(cls, count: int, model: str | None = None) -> list[Sample]:
        return []  # no v1 route: nothing for the load tester's or the hostile corpus' v1 requests

    @classmethod
    def cli_request(cls, inputs: list[str], options: dict[str, Any], model: str) -> TensorRequest:
        """`tuneserve predict MODEL inputs.npz`: the arrays of .npz files (by name) and .npy files
        (named by their file's stem)."""
        arrays: dict[str, np.ndarray] = {}
        for path in map(Path, inputs):
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as archive:
                    arrays |= {k: archive[k] for k in archive.files}
            elif path.suffix == ".npy":
                arrays[path.stem] = np.load(path, allow_pickle=False)
            else:
                raise ValueError(f"{path}: give the inputs as .npz (arrays by input name) or .npy files")
        return TensorRequest(model, arrays)

    @classmethod
    def cli_rows(cls, inputs: list[str], answer: dict[str, Any]) -> None:
        return None  # the JSON answer
