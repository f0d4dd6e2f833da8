"""The task zoo: procedurally generated task families the recommender's meta-dataset is swept on.

Each family is a :class:`~autoopt.tasks.zoo.base.ZooTask` subclass whose ``variants`` hold one
knob dict per instance; an instance id is ``<family>-<index>`` (``nlp_transformer-03``) and
:func:`load_instance` rebuilds it, deterministically in (family, knobs, seed). Traits (parameter
count, gradient sparsity) are measured on the built model, never declared.
"""

from __future__ import annotations

from autoopt.tasks.zoo.base import ZooTask
from autoopt.tasks.zoo.language import BagOfEmbeddings, RecurrentClassifier, TinyTransformer
from autoopt.tasks.zoo.other import ConvDenoiser, MLPAutoencoder
from autoopt.tasks.zoo.recsys import HashedCTR, RatingsMF
from autoopt.tasks.zoo.signals import SignalConv, SignalGRU
from autoopt.tasks.zoo.tabular import TabularClassifier, TabularRegressor
from autoopt.tasks.zoo.vision import SmallCNN, SmallResNet, TinyViT

#: Family name -> class, in the order the sweep visits them.
FAMILIES: dict[str, type[ZooTask]] = {
    cls.family: cls
    for cls in (
        SmallCNN, SmallResNet, TinyViT,
        TinyTransformer, RecurrentClassifier, BagOfEmbeddings,
        TabularClassifier, TabularRegressor,
        RatingsMF, HashedCTR,
        SignalConv, SignalGRU,
        MLPAutoencoder, ConvDenoiser,
    )
}


def family_of(instance_id: str) -> type[ZooTask]:
    family, sep, index = instance_id.rpartition("-")
    if not sep or family not in FAMILIES or not index.isdigit():
        raise ValueError(f"unknown zoo instance {instance_id!r}: ids look like '<family>-<NN>', "
                         f"families: {', '.join(FAMILIES)}")
    return FAMILIES[family]


def instances(families: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """Instance ids, round-robin over families (every family's first instance, then the seconds...)."""
    chosen = list(families) if families else list(FAMILIES)
    unknown = [f for f in chosen if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown zoo famil{'ies' if len(unknown) > 1 else 'y'} {unknown}; known: {', '.join(FAMILIES)}")
    depth = max(len(FAMILIES[f].variants) for f in chosen)
    return [f"{f}-{i:02d}" for i in range(depth) for f in chosen if i < len(FAMILIES[f].variants)]


def load_instance(instance_id: str, **kwargs) -> ZooTask:
    """The task of ``instance_id``; ``seed=`` or knob overrides go to the family's constructor."""
    cls = family_of(instance_id)
    index = int(instance_id.rpartition("-")[2])
    if index >= len(cls.variants):
        raise ValueError(f"unknown zoo instance {instance_id!r}: {cls.family} has {len(cls.variants)} instances")
    return cls(index, **kwargs)


__all__ = ["FAMILIES", "ZooTask", "family_of", "instances", "load_instance"]
