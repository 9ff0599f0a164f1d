"""Audio classification (keyword spotting): one-second windows → log-mel → a CNN → label.

Clips are decoded and resampled by serving's `decode_audio` and turned into features by the same
`LogMelFrontEnd` the server uses. Training adds waveform augmentation (time shift, gain, background
noise at a random SNR: white, pink, brown, 50/60 Hz hum) and SpecAugment-style masks on the features.
Backbones: the pretrained EfficientNet-Lite0 (log-mel as a 3-channel image) or a small CNN from scratch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn

from serving.processing.audio import LogMelFrontEnd, decode_audio
from training.backbones import TimmClassifier
from training.data.images import ImageExamples, read_class_folder, resolve_dataset_folder
from training.data.keywords import make_noise
from training.tasks.base import Preprocessing, Splits
from training.tasks.decoded import DecodedClassificationTask

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg"}
NOISE_KINDS = ("white", "pink", "brown", "hum50", "hum60")


class AudioPreprocessing(Preprocessing):
    """The server's `LogMelFrontEnd` parameters, with its defaults; augment_strength scales the time
    shift, gain, background noise and SpecAugment masks of training clips."""

    sample_rate: int = LogMelFrontEnd.sample_rate
    n_fft: int = LogMelFrontEnd.n_fft
    win_length: int = LogMelFrontEnd.win_length
    hop_length: int = LogMelFrontEnd.hop_length
    n_mels: int = LogMelFrontEnd.n_mels
    fmin: float = LogMelFrontEnd.fmin
    fmax: float = LogMelFrontEnd.fmax
    window_seconds: float = LogMelFrontEnd.window_seconds
    log_floor: float = LogMelFrontEnd.log_floor


class LogMelClassifier(nn.Module):
    """Input (batch, 1, mels, frames) log-mel. A learned input norm, then the backbone; a 3-channel
    backbone (ImageNet CNN) sees the same map on every channel."""

    def __init__(
        self, backbone: nn.Module, features: int, num_labels: int, dropout: float, in_channels: int
    ) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(1)
        self.backbone = backbone
        self.in_channels = in_channels
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(features, num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.norm(features)
        if self.in_channels != 1:
            x = x.expand(-1, self.in_channels, -1, -1)
        return self.head(self.dropout(self.backbone(x)))


class AudioClassificationTask(DecodedClassificationTask[AudioPreprocessing]):
    name = "audio-classification"
    modality = "audio"
    input_names: ClassVar[list[str]] = ["features"]
    channels_last = True
    dynamic_axes: ClassVar[dict[str, dict[int, str]]] = {"features": {0: "batch"}, "logits": {0: "batch"}}
    preprocessing_model = AudioPreprocessing

    def __init__(self, recipe, backbone) -> None:
        super().__init__(recipe, backbone)
        self.front_end = LogMelFrontEnd(**self.options.model_dump(exclude={"augment_strength"}))
        self.strength = self.options.augment_strength
        self._epoch_rng = np.random.default_rng(recipe.train.seed)

    def load_data(self) -> Splits:
        d = self.recipe.data
        root = resolve_dataset_folder(d.source, d.seed, self.progress)
        labels = list(self.recipe.labels) if self.recipe.labels else None
        if (root / "train").is_dir() and (
            root / "test"
        ).is_dir():  # held-out speakers: keep the given test split
            train_p, train_n = read_class_folder(root / "train", AUDIO_SUFFIXES)
            test_p, test_n = read_class_folder(root / "test", AUDIO_SUFFIXES)
        else:
            paths, names = read_class_folder(root, AUDIO_SUFFIXES)
            train_p, test_p, train_n, test_n = train_test_split(
                paths, names, test_size=d.test_fraction, random_state=d.seed, stratify=names
            )
        classes = labels or sorted(set(train_n))
        unknown = sorted((set(train_n) | set(test_n)) - set(classes))
        if unknown:
            raise ValueError(f"clip folders {unknown} are not among the recipe's labels")
        index = {c: i for i, c in enumerate(classes)}
        train_y, test_y = [index[n] for n in train_n], [index[n] for n in test_n]
        if d.limit is not None and d.limit < len(train_p):
            train_p, _, train_y, _ = train_test_split(
                train_p, train_y, train_size=d.limit, random_state=d.seed, stratify=train_y
            )
            test_p, test_y = (
                test_p[: max(len(classes), d.limit // 4)],
                test_y[: max(len(classes), d.limit // 4)],
            )
        train_p, val_p, train_y, val_y = train_test_split(
            train_p, train_y, test_size=d.val_fraction, random_state=d.seed, stratify=train_y
        )
        return Splits(
            ImageExamples(train_p, train_y),
            ImageExamples(val_p, val_y),
            ImageExamples(test_p, test_y),
            classes,
        )

    def build_model(self, label_names: list[str]) -> nn.Module:
        net = self.backbone.load()
        timm_net = cast(TimmClassifier, net)  # used only where the backbone has timm's methods
        features = (
            timm_net.get_classifier().in_features
            if hasattr(net, "get_classifier")
            else self.backbone.hidden_size
        )
        if hasattr(net, "reset_classifier"):
            timm_net.reset_classifier(0)
        in_channels = 3 if self.backbone.pretrained_labels else 1
        return LogMelClassifier(net, features, len(label_names), self.recipe.train.dropout, in_channels)

    def decode(self, data: bytes) -> np.ndarray:
        return decode_audio(data, target_rate=self.front_end.sample_rate)

    def train_transform(self, samples: np.ndarray) -> np.ndarray:
        rng, s = self._epoch_rng, self.strength
        x: np.ndarray = self.front_end.fit_window(samples).astype(np.float32)
        shift = int(rng.integers(-int(1600 * s), int(1600 * s) + 1))  # ±100 ms
        x = np.roll(x, shift)
        if shift > 0:
            x[:shift] = 0
        elif shift < 0:
            x[shift:] = 0
        x = x * float(10 ** (rng.uniform(-6, 6) * s / 20))
        if rng.random() < 0.8 * s:
            signal = float(np.sqrt(np.mean(x**2))) or 1e-3
            snr_db = rng.uniform(5, 30)
            x = x + make_noise(str(rng.choice(NOISE_KINDS)), len(x), rng) * signal / 10 ** (snr_db / 20)
        features = self.front_end(x)
        fill = features.mean()
        for axis, width in ((1, 8), (2, 12)):  # one frequency mask, one time mask
            w = int(rng.integers(0, int(width * s) + 1))
            if w:
                start = int(rng.integers(0, features.shape[axis] - w))
                index = [slice(None)] * 3
                index[axis] = slice(start, start + w)
                features[tuple(index)] = fill
        return features

    def eval_transform(self, samples: np.ndarray) -> np.ndarray:
        return self.front_end(samples)

    def preprocessing_config(self) -> dict[str, Any]:
        return self.front_end.config() | {"vad": "silero_vad.onnx"}

    def assets(self) -> dict[str, Path]:
        """The Silero VAD model, so the server finds speech in long clips without extra packages."""
        import silero_vad

        return {"silero_vad.onnx": Path(silero_vad.__file__).parent / "data" / "silero_vad.onnx"}
