"""Tabular families: MLP classification and regression on generated and scikit-learn-bundled data.

Generated data comes from scikit-learn's ``make_classification`` / ``make_friedman1`` /
``make_regression`` (seeded from the instance); bundled sets are iris, wine, breast cancer and
digits (classification) and diabetes (regression), all shipped inside scikit-learn. Features are
standardised with the training split's statistics; regression targets too, so validation MSE is
in units of the target's variance.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from autoopt.tasks.zoo.base import MSETask, ZooTask, standardize, tensors

BUNDLED_CLASSIFICATION = ("iris", "wine", "breast_cancer", "digits")


def mlp(n_in: int, width: int, depth: int, n_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else width, width), nn.ReLU()]
    layers.append(nn.Linear(width if depth else n_in, n_out))
    return nn.Sequential(*layers)


def classification_data(rng: np.random.Generator, k: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    source = k["source"]
    if source in BUNDLED_CLASSIFICATION:
        from sklearn import datasets

        data = getattr(datasets, f"load_{source}")()
        x = data.data.astype(np.float64)
        return x + k.get("noise", 0.0) * x.std(0) * rng.standard_normal(x.shape), data.target
    from sklearn.datasets import make_classification

    return make_classification(
        n_samples=k["n_train"] + k["n_val"], n_features=k["features"], n_informative=k["informative"],
        n_redundant=min(2, k["features"] - k["informative"]), n_classes=k["classes"], n_clusters_per_class=2,
        class_sep=k["class_sep"], flip_y=k["flip_y"], random_state=int(rng.integers(2**31)),
    )


def regression_data(rng: np.random.Generator, k: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    source, n = k["source"], k.get("n_train", 0) + k["n_val"]
    seed = int(rng.integers(2**31))
    if source == "diabetes":
        from sklearn.datasets import load_diabetes

        data = load_diabetes()
        return data.data, data.target
    if source == "friedman1":
        from sklearn.datasets import make_friedman1

        return make_friedman1(n_samples=n, n_features=k["features"], noise=k["noise"], random_state=seed)
    from sklearn.datasets import make_regression

    x, y = make_regression(n_samples=n, n_features=k["features"], n_informative=k["informative"],
                           noise=0.0, random_state=seed)
    y = y / y.std()
    y = np.tanh(y) + 0.3 * np.sin(3 * x[:, 0]) * x[:, 1] + k["noise"] * rng.standard_normal(n)  # nonlinear
    return x, y


class TabularClassifier(ZooTask):
    """An MLP (``depth`` hidden ReLU layers of ``width``) classifying tabular rows."""

    family = "tab_cls"
    domain = "tabular"
    variants = (
        dict(source="generated", features=20, informative=8, classes=3, class_sep=0.8, flip_y=0.05, n_train=3000, n_val=500, width=64, depth=2, batch_size=64, steps=200),
        dict(source="wine", noise=1.0, n_val=50, width=64, depth=1, batch_size=16, steps=200),
        dict(source="breast_cancer", noise=0.5, n_val=150, width=32, depth=2, batch_size=32, steps=200),
        dict(source="generated", features=40, informative=12, classes=5, class_sep=0.7, flip_y=0.05, n_train=40000, n_val=1000, width=64, depth=2, batch_size=2048, steps=80),
        dict(source="iris", noise=0.5, n_val=50, width=64, depth=2, batch_size=8, steps=250),
        dict(source="digits", noise=0.5, n_val=400, width=128, depth=1, batch_size=128, steps=200),
        dict(source="generated", features=10, informative=5, classes=2, class_sep=0.5, flip_y=0.1, n_train=800, n_val=300, width=16, depth=3, batch_size=32, steps=250),
    )

    def make_datasets(self) -> tuple[Any, Any]:
        rng = self.rng()
        x, y = classification_data(rng, self.knobs)
        self.n_features, self.n_classes = x.shape[1], int(y.max()) + 1
        order = rng.permutation(len(y))
        n_val = int(self.knobs["n_val"])
        tr, va = standardize(x[order[n_val:]], x[order[:n_val]])
        return tensors(tr, y[order[n_val:]]), tensors(va, y[order[:n_val]])

    def build_model(self, sparse_gradients: bool = False) -> nn.Module:
        self.datasets()  # the data fixes the input width (and the class count)
        return mlp(self.n_features, int(self.knobs["width"]), int(self.knobs["depth"]), self.n_classes)


class TabularRegressor(MSETask):
    """An MLP regressing a standardised target; validation MSE."""

    family = "tab_reg"
    lr_shift = 0.5
    domain = "tabular"
    variants = (
        dict(source="friedman1", features=10, noise=0.5, n_train=3000, n_val=500, width=64, depth=2, batch_size=32, steps=250),
        dict(source="diabetes", n_val=90, width=32, depth=1, batch_size=16, steps=200),
        dict(source="regression", features=30, informative=10, noise=0.1, n_train=50000, n_val=1000, width=128, depth=2, batch_size=2048, steps=100),
        dict(source="friedman1", features=5, noise=1.0, n_train=300, n_val=200, width=32, depth=2, batch_size=8, steps=300),
        dict(source="regression", features=15, informative=6, noise=0.2, n_train=8000, n_val=500, width=64, depth=3, batch_size=256, steps=150),
        dict(source="diabetes", n_val=90, width=128, depth=2, batch_size=64, steps=150),
        dict(source="friedman1", features=20, noise=0.3, n_train=15000, n_val=1000, width=256, depth=2, batch_size=512, steps=100),
    )

    def make_datasets(self) -> tuple[Any, Any]:
        rng = self.rng()
        x, y = regression_data(rng, self.knobs)
        self.n_features = x.shape[1]
        order = rng.permutation(len(y))
        n_val = int(self.knobs["n_val"])
        tr_x, va_x = standardize(x[order[n_val:]], x[order[:n_val]])
        tr_y, va_y = standardize(y[order[n_val:], None], y[order[:n_val], None])
        return tensors(tr_x, tr_y), tensors(va_x, va_y)

    def build_model(self, sparse_gradients: bool = False) -> nn.Module:
        self.datasets()  # the data fixes the input width (and the class count)
        return mlp(self.n_features, int(self.knobs["width"]), int(self.knobs["depth"]), 1)
