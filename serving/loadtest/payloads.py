"""Request bodies for every endpoint of the HTTP contract: built-in samples per task, or the user's own
(`--payload-file`: JSONL of whole JSON bodies, or a folder of files for multipart endpoints).
Payloads rotate, so no cache can flatter the numbers."""

from __future__ import annotations

import io
import json
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import aiohttp
import numpy as np


@dataclass(frozen=True)
class Payload:
    """One request body: JSON bytes, or multipart files under one field (plus plain fields)."""

    json_body: bytes | None = None
    files: tuple[tuple[str, bytes, str], ...] = ()  # (filename, content, content type)
    file_field: str = ""
    fields: tuple[tuple[str, str], ...] = field(default=())

    def request_kwargs(self) -> dict[str, Any]:
        if self.json_body is not None:
            return {"data": self.json_body, "headers": {"content-type": "application/json"}}
        form = aiohttp.FormData()  # single-use in aiohttp: built per request
        for name, value in self.fields:
            form.add_field(name, value)
        for filename, content, content_type in self.files:
            form.add_field(self.file_field, content, filename=filename, content_type=content_type)
        return {"data": form}


def json_payload(body: dict[str, Any]) -> Payload:
    return Payload(json_body=json.dumps(body).encode())


_REQUESTS = [
    "what's my current balance", "I think someone stole my debit card", "send {n} dollars to my sister",
    "there is a charge of ${n} I don't recognise", "how do I change my PIN", "I'd like to open a savings account",
    "please close my checking account", "what are your mortgage rates for {n} years", "I moved, update my address",
    "let me talk to a real person", "can I afford a ${n} purchase right now", "my card was swallowed by the ATM",
    "transfer {n} from savings to checking tomorrow", "I was charged twice for the same order #{n}",
    "forgot my pin after {n} tries and now it's locked", "how much can I borrow for a car loan of {n}k",
    "change my phone number to 555-01{n}", "this bot is useless, get me an agent", "open a joint account with my partner",
    "I'm leaving the bank, shut everything down",
]
_ENTITY_TEXTS = [
    "Send ${n} to Maria Lopez at Chase in Denver on March 3rd", "Pay {n} dollars to Ahmed Khan by next Friday",
    "I flew Delta from Boston to Paris on 03/04/2025 and paid €{n}", "Refund {n} euros from Amazon to Yuki Tanaka",
    "Dr Priya Natarajan from Vodafone called me in Mumbai last Monday", "my rent of ${n} to Mr Okafor is due on the 5th",
    "Lufthansa charged £{n} for my flight to Berlin on 12 May", "Chen Wei at HSBC said the wire of {n} dollars left yesterday",
]


_OPENERS = ("", "hi, ", "hello! ", "excuse me, ", "quick question: ")
_CLOSERS = ("", " please", ", thanks", " asap", " today")


def _texts(templates: list[str], count: int) -> list[str]:
    """Distinct texts: every (template, opener, closer) combination once before any repeats."""
    t, o = len(templates), len(_OPENERS)
    return [
        _OPENERS[(i // t) % o] + templates[i % t].format(n=17 + (i * 37) % 983) + _CLOSERS[(i // (t * o)) % len(_CLOSERS)]
        for i in range(count)
    ]


def _images(count: int = 16, size: int = 224) -> list[tuple[str, bytes, str]]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        yy, xx = np.mgrid[0:size, 0:size] / size
        base = np.stack([xx * rng.uniform(50, 255), yy * rng.uniform(50, 255), (xx + yy) * rng.uniform(20, 127)], -1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf, fmt = io.BytesIO(), ("PNG", "JPEG")[i % 2]
        Image.fromarray(pixels).save(buf, format=fmt)
        out.append((f"sample{i}.{fmt.lower().replace('jpeg', 'jpg')}", buf.getvalue(), f"image/{fmt.lower()}"))
    return out


def _clips(count: int = 16, rate: int = 16000) -> list[tuple[str, bytes, str]]:
    rng = np.random.default_rng(0)
    t = np.arange(rate) / rate
    out = []
    for i in range(count):
        signal = 0.3 * np.sin(2 * np.pi * rng.uniform(120, 900) * t) + rng.normal(0, 0.02, t.size)
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
            w.writeframes((np.clip(signal, -1, 1) * 32767).astype("<i2").tobytes())
        out.append((f"clip{i}.wav", buf.getvalue(), "audio/wav"))
    return out


def _rows(count: int) -> list[dict[str, Any]]:
    """Credit applications in the `credit-risk` model's schema."""
    rng = np.random.default_rng(0)
    kinds, homes = ["salaried", "self_employed", "contract", "unemployed", "retired"], ["rent", "mortgage", "own"]
    purposes = ["debt_consolidation", "home_improvement", "car", "education", "medical", "small_business", "other"]
    return [
        {
            "age": int(rng.integers(21, 75)), "employment": kinds[i % 5], "annual_income": float(round(rng.lognormal(10.8, 0.5), -2)),
            "home_ownership": homes[i % 3], "credit_history_years": float(round(rng.uniform(0, 25), 1)),
            "open_credit_lines": int(rng.integers(1, 15)), "credit_utilization": float(round(rng.beta(2, 4), 3)),
            "debt_to_income": float(round(rng.uniform(0, 0.6), 3)), "delinquencies_2y": int(rng.poisson(0.3)),
            "loan_purpose": purposes[i % 7], "loan_amount": float(round(rng.uniform(1_000, 40_000), -2)),
            "term_months": [36, 60][i % 2], "has_cosigner": bool(i % 11 == 0),
        }
        for i in range(count)
    ]


def _series(count: int, length: int = 336) -> list[list[float]]:
    rng = np.random.default_rng(0)
    hours = np.arange(length)
    return [
        np.round(500 + 120 * np.sin(2 * np.pi * (hours + s) / 24) + 40 * np.sin(2 * np.pi * hours / 168) + rng.normal(0, 10, length), 2).tolist()
        for s in range(count)
    ]


@dataclass(frozen=True)
class Endpoint:
    route: str
    file_field: str  # "" for JSON endpoints
    default_model: str
    builtin: Callable[[str | None], list[Payload]]


def _with_model(body: dict[str, Any], model: str | None) -> dict[str, Any]:
    return {"model": model, **body} if model else body


def _multipart(files: list[tuple[str, bytes, str]], field_name: str, model: str | None) -> list[Payload]:
    fields = (("model", model),) if model else ()
    return [Payload(files=(f,), file_field=field_name, fields=fields) for f in files]


ENDPOINTS: dict[str, Endpoint] = {
    "text/classify": Endpoint("/v1/text/classify", "", "intent", lambda m: [json_payload(_with_model({"texts": [t]}, m)) for t in _texts(_REQUESTS, 500)]),
    "text/entities": Endpoint("/v1/text/entities", "", "entities", lambda m: [json_payload(_with_model({"texts": [t]}, m)) for t in _texts(_ENTITY_TEXTS, 200)]),
    "image/classify": Endpoint("/v1/image/classify", "images", "imagenet", lambda m: _multipart(_images(), "images", m)),
    "audio/classify": Endpoint("/v1/audio/classify", "audio", "keywords", lambda m: _multipart(_clips(), "audio", m)),
    "tabular/predict": Endpoint("/v1/tabular/predict", "", "credit-risk", lambda m: [json_payload(_with_model({"rows": [r]}, m)) for r in _rows(200)]),
    "forecast": Endpoint("/v1/forecast", "", "energy-demand", lambda m: [json_payload(_with_model({"history": s, "horizon": 24}, m)) for s in _series(50)]),
}

CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg"}


def get_endpoint(name: str) -> Endpoint:
    key = name.strip("/").removeprefix("v1/")
    if key not in ENDPOINTS:
        raise ValueError(f"unknown endpoint {name!r}; known: {', '.join(ENDPOINTS)}")
    return ENDPOINTS[key]


def builtin_payloads(endpoint: str, model: str | None) -> list[Payload]:
    return get_endpoint(endpoint).builtin(model)


def payloads_from_file(endpoint: str, path: Path, model: str | None = None) -> list[Payload]:
    """JSONL (one whole JSON body per line) for JSON endpoints; a folder of files for multipart ones."""
    ep = get_endpoint(endpoint)
    if ep.file_field:
        if not path.is_dir():
            raise ValueError(f"{endpoint} takes files: --payload-file must be a folder, got {path}")
        files = [(p.name, p.read_bytes(), CONTENT_TYPES.get(p.suffix.lower(), "application/octet-stream")) for p in sorted(path.iterdir()) if p.is_file()]
        if not files:
            raise ValueError(f"{path}: no files")
        return _multipart(files, ep.file_field, model)
    payloads = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                body = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON ({exc})") from None
            payloads.append(json_payload(_with_model(body, model) if isinstance(body, dict) and "model" not in body else body))
    if not payloads:
        raise ValueError(f"{path}: no payloads")
    return payloads
