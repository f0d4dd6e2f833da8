"""Computer-vision families: a small CNN, a small ResNet (BatchNorm) and a tiny ViT.

Images are either scikit-learn's bundled 8x8 digits (pixel noise added by a knob) or generated
"patterns": each class is a template of a few Gaussian blobs of either sign, each example the
template of its class at a random circular shift and contrast, under pixel noise. The shift
makes translation invariance pay; the noise keeps validation accuracy below 100%.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from autoopt.tasks.zoo.base import ZooTask, split


def pattern_images(rng: np.random.Generator, n: int, n_classes: int, size: int, noise: float,
                   max_shift: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` generated (1, size, size) images and their labels."""
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing="ij"), -1).astype(np.float64)
    templates = np.zeros((n_classes, size, size))
    for c in range(n_classes):
        for _ in range(3):
            center = rng.uniform(0, size, 2)
            sigma = rng.uniform(0.08, 0.22) * size
            sign = rng.choice((-1.0, 1.0))
            templates[c] += sign * np.exp(-((grid - center) ** 2).sum(-1) / (2 * sigma**2))
        templates[c] /= np.abs(templates[c]).max()
    labels = rng.integers(0, n_classes, n)
    dy, dx = (rng.integers(-max_shift, max_shift + 1, n) for _ in range(2))
    rows = (np.arange(size)[None, :] + dy[:, None]) % size
    cols = (np.arange(size)[None, :] + dx[:, None]) % size
    images = templates[labels][np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    images = images * rng.uniform(0.6, 1.4, (n, 1, 1)) + noise * rng.standard_normal(images.shape)
    return images[:, None].astype(np.float32), labels


def digit_images(rng: np.random.Generator, n: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Up to 1,797 bundled digits (a seeded subset), scaled to [0, 1], with pixel noise."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pick = rng.permutation(len(digits.target))[:n]
    images = digits.images[pick] / 16.0 + noise * rng.standard_normal((len(pick), 8, 8))
    return images[:, None].astype(np.float32), digits.target[pick]


class ImageTask(ZooTask):
    """Image classification on digits or generated patterns; knobs pick the data."""

    domain = "cv"

    @property
    def image_size(self) -> int:
        return 8 if self.knobs["source"] == "digits" else int(self.knobs["size"])

    @property
    def n_classes(self) -> int:
        return 10 if self.knobs["source"] == "digits" else int(self.knobs["classes"])

    def make_datasets(self) -> tuple[Any, Any]:
        k, rng = self.knobs, self.rng()
        n_val = int(k.get("n_val", 400))
        if k["source"] == "digits":
            x, y = digit_images(rng, k["n_train"] + n_val, k["noise"])
        else:
            x, y = pattern_images(rng, k["n_train"] + n_val, self.n_classes, self.image_size, k["noise"], k["shift"])
        return split(rng, n_val, x, y)


class SmallCNN(ImageTask):
    """Two conv-relu-maxpool stages and a linear layer on the flattened maps: no normalisation layers."""

    family = "cv_cnn"
    variants = (
        dict(source="patterns", size=12, classes=6, noise=0.8, shift=2, n_train=4000, width=8, batch_size=32, steps=120),
        dict(source="digits", noise=0.3, n_train=1200, width=8, batch_size=16, steps=200),
        dict(source="patterns", size=12, classes=10, noise=1.0, shift=2, n_train=8000, width=8, batch_size=128, steps=100),
        dict(source="digits", noise=0.6, n_train=500, width=16, batch_size=32, steps=150),
        dict(source="patterns", size=12, classes=4, noise=1.4, shift=3, n_train=2000, width=12, batch_size=8, steps=250),
        dict(source="patterns", size=8, classes=8, noise=0.9, shift=1, n_train=20000, width=8, batch_size=512, steps=80),
    )

    def build_model(self, sparse_gradients: bool = False) -> nn.Module:
        w = int(self.knobs["width"])
        return nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * w * (self.image_size // 4) ** 2, self.n_classes),
        )


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                     if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.skip(x))


class SmallResNet(ImageTask):
    """A stem conv and ``blocks`` residual blocks (BatchNorm), the width doubling once."""

    family = "cv_resnet"
    lr_shift = 0.5
    variants = (
        dict(source="digits", noise=0.4, n_train=1300, width=8, blocks=2, batch_size=32, steps=120),
        dict(source="patterns", size=12, classes=8, noise=1.0, shift=3, n_train=6000, width=8, blocks=1, batch_size=64, steps=120),
        dict(source="patterns", size=12, classes=6, noise=1.2, shift=3, n_train=3000, width=8, blocks=1, batch_size=32, steps=120),
        dict(source="digits", noise=0.8, n_train=800, width=16, blocks=1, batch_size=16, steps=200),
        dict(source="patterns", size=8, classes=10, noise=0.8, shift=1, n_train=10000, width=8, blocks=2, batch_size=128, steps=80),
        dict(source="patterns", size=8, classes=5, noise=1.5, shift=2, n_train=1500, width=8, blocks=2, batch_size=8, steps=200),
    )

    def build_model(self, sparse_gradients: bool = False) -> nn.Module:
        w, blocks = int(self.knobs["width"]), int(self.knobs["blocks"])
        layers: list[nn.Module] = [nn.Conv2d(1, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
        c = w
        for b in range(blocks):
            out = 2 * w if b == blocks // 2 else c
            layers.append(_ResBlock(c, out, 2 if out != c else 1))
            c = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, self.n_classes)]
        return nn.Sequential(*layers)


class _ViT(nn.Module):
    def __init__(self, image: int, patch: int, dim: int, depth: int, heads: int, n_classes: int) -> None:
        super().__init__()
        n_patches = (image // patch) ** 2
        self.patch = patch
        self.embed = nn.Linear(patch * patch, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, n_patches + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch
        patches = x.unfold(2, p, p).unfold(3, p, p).reshape(len(x), -1, p * p)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), self.embed(patches)], 1) + self.pos
        return self.head(self.norm(self.encoder(tokens)[:, 0]))


class TinyViT(ImageTask):
    """Patch embedding, a class token, ``depth`` pre-norm transformer layers."""

    family = "cv_vit"
    variants = (
        dict(source="digits", noise=0.3, n_train=1300, patch=4, dim=32, depth=1, heads=2, batch_size=32, steps=150),
        dict(source="patterns", size=12, classes=6, noise=0.6, shift=1, n_train=5000, patch=4, dim=32, depth=2, heads=4, batch_size=32, steps=120),
        dict(source="patterns", size=12, classes=8, noise=0.8, shift=1, n_train=3000, patch=3, dim=24, depth=1, heads=2, batch_size=32, steps=150),
        dict(source="digits", noise=0.6, n_train=700, patch=4, dim=32, depth=2, heads=4, batch_size=16, steps=150),
        dict(source="patterns", size=12, classes=10, noise=0.6, shift=1, n_train=12000, patch=4, dim=16, depth=1, heads=2, batch_size=256, steps=80),
        dict(source="patterns", size=12, classes=5, noise=0.9, shift=1, n_train=2000, patch=4, dim=32, depth=1, heads=4, batch_size=8, steps=250),
    )

    def build_model(self, sparse_gradients: bool = False) -> nn.Module:
        k = self.knobs
        return _ViT(self.image_size, int(k["patch"]), int(k["dim"]), int(k["depth"]), int(k["heads"]), self.n_classes)
