"""Speech-like families: a 1-D CNN and a GRU over frames, classifying generated tone bursts.

Each class is a frequency track (a start frequency and a chirp slope, drawn per instance, so
neighbouring classes can be close). An example is its class's chirp with random phase and
amplitude, present only in a random window of the clip, optionally amplitude-modulated, under
white noise: the class is in the pitch contour, its timing is not.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from autoopt.tasks.zoo.base import ZooTask, split


def tone_bursts(rng: np.random.Generator, n: int, length: int, n_classes: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """(n, 1, length) float32 clips and their labels."""
    start = rng.uniform(0.04, 0.3, n_classes)  # cycles per sample
    slope = rng.uniform(-0.15, 0.15, n_classes)
    labels = rng.integers(0, n_classes, n)
    t = np.arange(length)[None, :] / length
    freq = start[labels, None] * (1 + rng.normal(0, 0.03, (n, 1))) + slope[labels, None] * t / 2
    phase = 2 * np.pi * np.cumsum(freq, 1) + rng.uniform(0, 2 * np.pi, (n, 1))
    width = rng.uniform(0.4, 0.9, (n, 1))
    onset = rng.uniform(0, 1, (n, 1)) * (1 - width)
    window = ((t >= onset) & (t < onset + width)).astype(np.float64)
    am = 1 + 0.5 * np.sin(2 * np.pi * rng.uniform(1, 4, (n, 1)) * t) * (rng.random((n, 1)) < 0.5)
    clips = rng.uniform(0.5, 1.5, (n, 1)) * am * window * np.sin(phase) + noise * rng.standard_normal((n, length))
    return clips[:, None].astype(np.float32), labels


class SignalTask(ZooTask):
    domain = "speech"

    def make_datasets(self) -> tuple[Any, Any]:
        k, rng = self.knobs, self.rng()
        x, y = tone_bursts(rng, k["n_train"] + 500, k["length"], k["classes"], k["noise"])
        return split(rng, 500, x, y)


class SignalConv(SignalTask):
    """Strided 1-D convolutions (``depth`` of them), global average pool, linear."""

    family = "speech_conv"
    variants = (
        dict(length=128, classes=6, noise=1.0, n_train=4000, width=16, depth=3, batch_size=32, steps=150),
        dict(length=128, classes=10, noise=0.8, n_train=10000, width=16, depth=4, batch_size=256, steps=80),
        dict(length=96, classes=4, noise=1.5, n_train=1000, width=8, depth=2, batch_size=8, steps=250),
        dict(length=128, classes=8, noise=1.2, n_train=6000, width=24, depth=3, batch_size=32, steps=150),
        dict(length=64, classes=5, noise=0.7, n_train=20000, width=8, depth=3, batch_size=1024, steps=80),
        dict(length=128, classes=6, noise=1.0, n_train=3000, width=12, depth=4, batch_size=16, steps=200),
    )

    def build_model(self, sparse_gradients: bool = False) -> nn.Module:
        w, depth = int(self.knobs["width"]), int(self.knobs["depth"])
        layers: list[nn.Module] = []
        c = 1
        for _ in range(depth):
            layers += [nn.Conv1d(c, w, 7, stride=2, padding=3), nn.ReLU()]
            c = w
        layers += [nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(w, int(self.knobs["classes"]))]
        return nn.Sequential(*layers)


class _FrameGRU(nn.Module):
    def __init__(self, frame: int, hidden: int, n_classes: int) -> None:
        super().__init__()
        self.frame = frame
        self.rnn = nn.GRU(frame, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        frames = clips.reshape(len(clips), -1, self.frame)
        out, _ = self.rnn(frames)
        return self.head(out[:, -1])


class SignalGRU(SignalTask):
    """A GRU over non-overlapping frames of ``frame`` samples, classified from its last state."""

    family = "speech_gru"
    variants = (
        dict(length=96, frame=8, classes=5, noise=0.8, n_train=4000, hidden=32, batch_size=32, steps=150),
        dict(length=128, frame=16, classes=8, noise=0.7, n_train=10000, hidden=48, batch_size=256, steps=80),
        dict(length=96, frame=12, classes=4, noise=1.2, n_train=1500, hidden=24, batch_size=8, steps=250),
        dict(length=128, frame=16, classes=6, noise=1.0, n_train=6000, hidden=48, batch_size=64, steps=120),
        dict(length=64, frame=8, classes=6, noise=0.9, n_train=20000, hidden=32, batch_size=1024, steps=60),
        dict(length=96, frame=12, classes=5, noise=1.2, n_train=2500, hidden=32, batch_size=16, steps=200),
    )

    def build_model(self, sparse_gradients: bool = False) -> nn.Module:
        k = self.knobs
        return _FrameGRU(int(k["frame"]), int(k["hidden"]), int(k["classes"]))
