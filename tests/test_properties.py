"""Property tests of the pre-processors and the request-body parser: whatever a client sends, the
answer is a usable array/object or a clear InputError/RequestError (a ValueError) with a message —
never another exception type, never a non-finite number for the model, never something the JSON
response cannot carry."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from serving.errors import InputError, RequestError
from serving.processing.audio import decode_audio
from serving.processing.image import ImagePreprocessor, decode_image
from serving.processing.series import clean_history
from serving.protocols.bodies import JSONResponse, parse_json_body
from serving.tasks.forecasting import ForecastRequest
from serving.tasks.tabular import TabularRequest
from serving.tasks.text import TextRequest
from tests.data.make_hostile import (
    HISTORY,
    ROW,
    bmp_header,
    deep,
    flac_streaminfo,
    jpeg,
    ogg_vorbis_first_page,
    png,
    wav,
)

# Bounded and reproducible: the whole file runs in well under a minute on 2 cores.
PROPERTY = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW_PROPERTY = settings(PROPERTY, max_examples=100)

# JSON as clients send it, including what Python's json module accepts beyond the standard
# (NaN, Infinity) and integers far outside any machine type.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([1e308, -1e308, 5e-324, 1e30, 1e31])
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# any unicode, lone surrogates included (valid in a Python str and in JSON \uXXXX escapes)
any_text = st.text(st.characters(exclude_categories=()), max_size=60)


def mutations(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """A seed file with bytes overwritten, inserted and the end cut off: mostly-valid files that
    reach deep into a decoder."""

    @st.composite
    def mutate(draw) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(0, 6))):
            at = draw(st.integers(0, max(0, len(data) - 1)))
            chunk = draw(st.binary(min_size=1, max_size=4))
            if draw(st.booleans()):
                data[at : at + len(chunk)] = chunk
            else:
                data[at:at] = chunk
        return bytes(data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data)

    return mutate()


def renders_as_json(value) -> bytes:
    """What Starlette's JSONResponse does with an answer (allow_nan=False, UTF-8)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")


def assert_clear_error(exc: Exception, kind: type[Exception] = InputError) -> None:
    assert isinstance(exc, kind) and isinstance(exc, ValueError), f"{type(exc).__name__}: {exc}"
    assert str(exc).strip()


@pytest.fixture(scope="module")
def loaded(tiny_repository):
    """The tiny repository's models, loaded once: name → LoadedModel (its task does the work)."""
    from serving.runtime import Runtime
    from serving.settings import Settings

    runtime = Runtime(Settings(repository=tiny_repository, device="cpu", threads=1))
    assert not runtime.broken, runtime.broken
    return runtime.models


# --- images -------------------------------------------------------------------------------------


def _image_seeds() -> list[bytes]:
    import cv2

    y, x = np.mgrid[0:20, 0:24]
    rgb = np.stack([x * 10, y * 12, (x + y) * 5], axis=-1).astype(np.uint8)
    seeds = [jpeg(), png(12, 10), bmp_header(4, 4) + bytes(48)]
    for ext in (".png", ".bmp", ".tiff", ".webp"):
        seeds.append(cv2.imencode(ext, rgb)[1].tobytes())
    seeds.append(cv2.imencode(".png", (rgb[..., 0].astype(np.uint16) * 257))[1].tobytes())  # 16-bit grey
    seeds.append(cv2.imencode(".png", np.dstack([rgb, rgb[..., :1]]))[1].tobytes())  # with alpha
    return seeds


IMAGE_SEEDS = _image_seeds()


def check_image(data: bytes) -> None:
    try:
        rgb = decode_image(data)
    except Exception as exc:
        assert_clear_error(exc)
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.shape[0] * rgb.shape[1] > 0
    tensor = ImagePreprocessor(resize_shorter=36, crop=32)(rgb)
    assert tensor.shape == (3, 32, 32) and tensor.dtype == np.float32 and np.isfinite(tensor).all()


# Pillow warns about the corrupt EXIF blocks of mangled TIFFs; refusing them is the point here.
quiet_pillow = pytest.mark.filterwarnings("ignore::UserWarning")


@quiet_pillow
@PROPERTY
@given(st.binary(max_size=2048))
@example(png(50_000, 50_000, b"\x00" * 64))
@example(png(0, 0, b""))
@example(bmp_header(-5, -5))
@example(b"GIF89a/*\x01\x00\x01\x00\x00\x00\x00*/=1;alert(1);")
def test_any_bytes_decode_to_an_image_or_an_image_error(data):
    check_image(data)


@quiet_pillow
@PROPERTY
@given(mutations(IMAGE_SEEDS))
def test_mutated_images_decode_or_are_refused(data):
    check_image(data)


# --- audio --------------------------------------------------------------------------------------


def _audio_seeds() -> list[bytes]:
    import soundfile as sf

    t = np.arange(3200) / 16000
    tone = (0.4 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    seeds = [
        flac_streaminfo(),
        ogg_vorbis_first_page(),
        wav(),
        wav(rate=8000, channels=2, bits=8, data=bytes(range(256)) * 8),
    ]
    for fmt, subtype in (
        ("WAV", "PCM_16"),
        ("WAV", "PCM_24"),
        ("WAV", "FLOAT"),
        ("WAV", "PCM_U8"),
        ("FLAC", "PCM_16"),
    ):
        out = io.BytesIO()
        sf.write(out, tone, 16000, format=fmt, subtype=subtype)
        seeds.append(out.getvalue())
    return seeds


AUDIO_SEEDS = _audio_seeds()


def check_audio(data: bytes, predictor=None) -> None:
    try:
        samples = decode_audio(data)
        clip = predictor.prepare_file(data) if predictor is not None else None
    except Exception as exc:
        assert_clear_error(exc)
        return
    assert (
        samples.dtype == np.float32 and samples.ndim == 1 and len(samples) > 0 and np.isfinite(samples).all()
    )
    if clip is not None:
        assert all(np.isfinite(w.features).all() for w in clip.windows)


@PROPERTY
@given(st.binary(max_size=2048))
@example(wav(data=b"", declared=0xFFFFFFF0))
@example(wav(rate=0))
@example(wav(bits=32, encoding=3, data=b"\x00\x00\xc0\x7f" * 400))  # NaN floats
@example(wav(bits=32, encoding=3, data=b"\x99\x76\x96\x7e" * 400))  # 1e38 floats
def test_any_bytes_decode_to_samples_or_an_audio_error(data):
    check_audio(data)


@SLOW_PROPERTY
@given(mutations(AUDIO_SEEDS))
def test_mutated_audio_decodes_to_finite_features_or_is_refused(loaded, data):
    check_audio(data, loaded["keywords"].task)


# --- text ---------------------------------------------------------------------------------------


@PROPERTY
@given(st.lists(any_text, min_size=1, max_size=4))
@example(["\ud800", "a\udfffb", "\x00", ""])
@example(["\u202e\u0301" * 40 + "\U0001f600" * 30])
def test_any_unicode_tokenises_into_valid_ids(loaded, texts):
    pre = loaded["intent"].task.preprocessor
    batch = pre.encode(texts)
    vocab = pre.tokenizer.get_vocab_size()
    assert batch.input_ids.shape == batch.attention_mask.shape and batch.input_ids.shape[0] == len(texts)
    assert batch.input_ids.shape[1] <= pre.max_length and batch.input_ids.dtype == np.int64
    assert ((batch.input_ids >= 0) & (batch.input_ids < vocab)).all() and set(
        np.unique(batch.attention_mask)
    ) <= {0, 1}


@SLOW_PROPERTY
@given(st.lists(any_text, min_size=1, max_size=3))
@example(["Send $250 to Ma\ud800ria Lopez at Chase in Denver"])
def test_any_unicode_gets_labels_and_entity_spans_that_render(loaded, texts):
    for answer in loaded["intent"].task.run(texts):
        assert math.isfinite(answer["score"]) and renders_as_json(answer)
    for text, answer in zip(texts, loaded["entities"].task.run(texts)):
        renders_as_json(answer)
        for span in answer["entities"]:
            assert 0 <= span["start"] <= span["end"] <= len(text)
            assert len(span["text"]) == span["end"] - span["start"]


# --- table rows ---------------------------------------------------------------------------------


@st.composite
def hostile_rows(draw) -> list:
    """Rows near the credit-risk schema: cells replaced by any JSON, columns dropped or added."""
    rows = []
    for _ in range(draw(st.integers(1, 3))):
        row = dict(ROW)
        for name in draw(st.lists(st.sampled_from(sorted(ROW)), max_size=3)):
            if draw(st.booleans()):
                row[name] = draw(json_values)
            else:
                row.pop(name, None)
        if draw(st.integers(0, 5)) == 0:
            row[draw(st.text(max_size=8))] = draw(json_scalars)
        rows.append(row)
    return rows


@PROPERTY
@given(hostile_rows() | json_values | st.lists(json_values, max_size=3))
@example([dict(ROW, age=float("nan"))])
@example([dict(ROW, loan_amount=1e308)])
@example([dict(ROW, age=10**400)])
@example([ROW] * 1001)
def test_any_json_rows_encode_to_finite_arrays_or_a_row_error(loaded, rows):
    encoder = loaded["credit-risk"].task.encoder
    try:
        block = encoder.encode(rows)
    except Exception as exc:
        assert_clear_error(exc)
        return
    numeric = block["numeric"]
    assert (
        numeric.dtype == np.float32
        and numeric.shape == (len(rows), encoder.numeric_width)
        and np.isfinite(numeric).all()
    )
    codes = block["categorical"]
    assert codes.dtype == np.int64 and ((codes >= 0) & (codes < np.array(encoder.cardinalities))).all()


# --- series -------------------------------------------------------------------------------------


@st.composite
def hostile_histories(draw) -> list:
    """The last `n` points of a clean series with some points replaced by any JSON value."""
    history = list(HISTORY[: draw(st.integers(160, len(HISTORY)))])
    for _ in range(draw(st.integers(0, 8))):
        at = draw(st.integers(0, len(history) - 1))
        history[at] = draw(json_scalars | st.sampled_from([None, float("nan")]))
    return history


@PROPERTY
@given(hostile_histories() | json_values, st.none() | st.integers(-(10**6), 10**6) | st.integers())
@example([None] * 200, None)
@example(HISTORY[:-1] + [1e308], 24)
@example(HISTORY[:190] + [float("nan")] * 10, 1)
def test_any_json_history_prepares_a_finite_window_or_a_clear_error(loaded, history, horizon):
    forecaster = loaded["energy-demand"].task
    try:
        values, _ = clean_history(history, forecaster.window, minimum=168)
        prepared = forecaster.prepare(
            ForecastRequest.model_construct(history=history, horizon=horizon, frequency=None)
        )
    except Exception as exc:
        assert_clear_error(exc, ValueError)
        return
    assert values.shape == (min(len(history), forecaster.window),) and np.isfinite(values).all()
    assert all(f.dtype == np.float32 and np.isfinite(f).all() for f in prepared.feeds)
    assert math.isfinite(prepared.loc) and math.isfinite(prepared.scale) and prepared.scale > 0
    assert 1 <= prepared.horizon <= forecaster.max_horizon


@PROPERTY
@given(
    st.sampled_from(["hourly", "daily", "weekly", "monthly", "quarterly", "yearly"]),
    st.integers(0, 700),
    st.floats(-1e12, 1e12, allow_nan=False),
    st.floats(0, 1e9, allow_nan=False),
    st.integers(1, 48),
)
def test_every_frequency_and_history_length_forecasts_or_names_the_minimum(
    loaded, frequency, length, level, spread, horizon
):
    """What the manifest claims: from each frequency's minimum history on, a finite forecast."""
    model = loaded["energy-demand"]
    task = model.task
    minimum = task.frequencies[frequency].min_history
    rng = np.random.default_rng(length)
    history = (level + spread * rng.standard_normal(length)).tolist()
    request = ForecastRequest(history=history or [0.0], horizon=horizon, frequency=frequency)
    if length < minimum:
        with pytest.raises(RequestError, match=f"needs at least {minimum} for {frequency}"):
            task.predict(request)
        return
    answer = task.predict(request)
    assert len(answer["forecast"]) == horizon and answer["frequency"] == frequency
    assert all(math.isfinite(v) for q in answer["quantiles"].values() for v in q)


# --- request bodies ----------------------------------------------------------------------------

REQUESTS = [TextRequest, TabularRequest, ForecastRequest]
FIELDS = ["model", "texts", "rows", "history", "horizon"]
body_objects = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), json_values, max_size=4)
body_bytes = (
    st.binary(max_size=512)
    | json_values.map(lambda v: json.dumps(v).encode())
    | body_objects.map(lambda v: json.dumps(v).encode())
    | st.text(st.characters(exclude_categories=()), max_size=80).map(
        lambda t: t.encode("utf-8", "surrogatepass")
    )
)


def check_body(raw: bytes, schema) -> None:
    try:
        body = parse_json_body(raw, schema)
    except Exception as exc:
        assert_clear_error(exc, RequestError)
        assert 400 <= exc.status < 500
        return
    assert isinstance(body, schema)


@PROPERTY
@given(body_bytes, st.sampled_from(REQUESTS))
@example(b'{"texts": ["a"], "model": NaN}', TextRequest)
@example(b'{"history": [Infinity, -Infinity], "horizon": 1e400}', ForecastRequest)
@example(b'{"rows": [{"a": 1' + b"0" * 400 + b"}]}", TabularRequest)
@example(b"\xef\xbb\xbf{}", TextRequest)
def test_any_body_parses_to_a_request_or_a_request_error(raw, schema):
    check_body(raw, schema)


# Documents that make Python's json module raise something other than JSONDecodeError
# (RecursionError, ValueError for integers over the digit limit): still a 4xx.
@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"texts": ' + deep(100_000).encode() + b"}", id="nested-100k"),
        pytest.param(b'{"texts": [' + b"9" * 5000 + b"]}", id="int-5000-digits"),
    ],
)
def test_pathological_json_is_a_request_error(raw):
    check_body(raw, TextRequest)


# --- answers ------------------------------------------------------------------------------------


def finite(value):
    """`value` with every non-finite float as None (what an answer's JSON carries for them)."""
    if isinstance(value, np.ndarray | np.generic):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [finite(v) for v in value]
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    return value


@PROPERTY
@given(json_values)
@example({"score": float("nan"), "big": 10**30, "text": "naïve ✓"})
@example([np.float32(0.25), np.int64(7), np.arange(3, dtype=np.int32), np.array([[0.5, np.inf]])])
def test_any_answer_renders_as_the_same_json(value):
    """The answers' JSON (orjson) reads back as the standard library's rendering of the same value,
    with numpy numbers as numbers and NaN or infinity as null instead of a 500."""
    body = JSONResponse(value).body
    expected = json.loads(json.dumps(finite(value)))
    assert json.loads(body) == expected
