"""Other families: an MLP autoencoder and a convolutional denoiser (validation MSE, minimised).

Autoencoder data lies near a ``latent``-dimensional nonlinear manifold in ``features``
dimensions (or is the bundled digits); the bottleneck decides how much of it can be kept. The
denoiser restores the generated pattern images of :mod:`autoopt.tasks.zoo.vision` from noisy
copies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from autoopt.tasks.zoo.base import MSETask, split
from autoopt.tasks.zoo.vision import pattern_images


def manifold_data(rng: np.random.Generator, n: int, latent: int, features: int, noise: float) -> np.ndarray:
    z = rng.standard_normal((n, latent))
    a = rng.standard_normal((latent, 4 * latent)) / np.sqrt(latent)
    b = rng.standard_normal((4 * latent, features)) / np.sqrt(4 * latent)
    x = np.tanh(z @ a) @ b + noise * rng.standard_normal((n, features))
    return (x - x.mean(0)) / x.std(0)


class MLPAutoencoder(MSETask):
    """Encoder ``features -> width -> bottleneck``, mirrored decoder; reconstructs its input."""

    family = "other_autoencoder"
    domain = "other"
    variants = (
        dict(source="manifold", latent=4, features=32, noise=0.1, n=3000, width=64, bottleneck=4, batch_size=64, steps=200),
        dict(source="digits", n=1797, width=128, bottleneck=8, batch_size=32, steps=250),
        dict(source="manifold", latent=8, features=128, noise=0.2, n=20000, width=256, bottleneck=8, batch_size=512, steps=100),
        dict(source="manifold", latent=3, features=16, noise=0.05, n=500, width=32, bottleneck=2, batch_size=8, steps=300),
        dict(source="digits", n=1797, width=64, bottleneck=16, batch_size=256, steps=150),
        dict(source="manifold", latent=6, features=64, noise=0.1, n=8000, width=128, bottleneck=6, batch_size=128, steps=150),
    )

    def make_datasets(self) -> tuple[Any, Any]:
        k, rng = self.knobs, self.rng()
        if k["source"] == "digits":
            from sklearn.datasets import load_digits

            x = load_digits().data / 16.0
        else:
            x = manifold_data(rng, k["n"], k["latent"], k["features"], k["noise"])
        return split(rng, min(500, len(x) // 4), x, x)

    def build_model(self, sparse_gradients: bool = False) -> nn.Module:
        d = 64 if self.knobs["source"] == "digits" else int(self.knobs["features"])
        w, b = int(self.knobs["width"]), int(self.knobs["bottleneck"])
        return nn.Sequential(nn.Linear(d, w), nn.ReLU(), nn.Linear(w, b),
                             nn.Linear(b, w), nn.ReLU(), nn.Linear(w, d))


class ConvDenoiser(MSETask):
    """Three 3x3 conv layers (``width`` channels) mapping a noisy image to the clean one."""

    family = "other_denoise"
    domain = "other"
    variants = (
        dict(size=12, classes=6, noise=0.5, n_train=3000, width=8, batch_size=32, steps=150),
        dict(size=8, classes=10, noise=0.8, n_train=8000, width=8, batch_size=128, steps=100),
        dict(size=12, classes=4, noise=0.3, n_train=1000, width=12, batch_size=8, steps=250),
        dict(size=8, classes=8, noise=1.0, n_train=5000, width=8, batch_size=256, steps=80),
        dict(size=12, classes=6, noise=0.6, n_train=2000, width=8, batch_size=16, steps=200),
        dict(size=8, classes=5, noise=0.7, n_train=12000, width=16, batch_size=64, steps=120),
    )

    def make_datasets(self) -> tuple[Any, Any]:
        k, rng = self.knobs, self.rng()
        clean, _ = pattern_images(rng, k["n_train"] + 400, k["classes"], k["size"], 0.0, k["size"] // 4)
        noisy = clean + k["noise"] * rng.standard_normal(clean.shape).astype(np.float32)
        return split(rng, 400, noisy, clean)

    def build_model(self, sparse_gradients: bool = False) -> nn.Module:
        w = int(self.knobs["width"])
        return nn.Sequential(nn.Conv2d(1, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(w, 1, 3, padding=1))
