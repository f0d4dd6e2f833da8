"""What a study's driver needs to know of a named task, kept on this machine between studies.

A driver needs a task's metric, direction, epochs and measured traits before its first trial (the
warm start and the pruner are set up from them), but it never trains the task: its trial workers
build the task anyway. Measuring them meant importing torch, building the dataset and running a
few backward passes in the driver (about 3 CPU-seconds of a cold ``autoopt run``), study after
study, for the same numbers. The first study of a task measures them and keeps them here; a later
study of the same task (same reference, options, source and versions) reads them without importing
torch, and its first trial worker checks the cheap ones (sizes, epochs, metric) against the task it
built (:func:`check`), so a task whose data changed outside its source is caught, corrected in the
study's record and measured again next time.

This module imports no torch: :func:`measure` is handed a task that is already built.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from autoopt.cache import cache_dir
from autoopt.core.tasks import REFERENCE_TASKS
from autoopt.core.traits import MEASURED, TaskTraits

#: Bump when what a profile holds, or how it is measured, changes: older files are then not read.
FORMAT = 1
#: A task module's folder with at most this many Python files is fingerprinted whole (the task's
#: model or data code often lives beside it); a larger one (site-packages) only the module itself.
FOLDER_FILES_MAX = 64
#: The traits a worker can check cheaply against the task it built (no backward passes).
CHECKED = ("batch_size", "dataset_size", "n_params")


@dataclass(frozen=True)
class TaskProfile:
    """A task's facts for its study's driver: what the coordinator, the pruner and the warm start need."""

    metric: str
    direction: str
    epochs: int
    #: training batches per epoch (the pruner's resource with ``eval_every_steps``)
    train_batches: int
    #: whether the model has hidden 2-D weights (Muon applies only to those)
    has_matrix_params: bool
    traits: TaskTraits

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["traits"] = self.traits.to_dict(MEASURED)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskProfile:
        return cls(metric=str(d["metric"]), direction=str(d["direction"]), epochs=int(d["epochs"]),
                   train_batches=int(d["train_batches"]), has_matrix_params=bool(d["has_matrix_params"]),
                   traits=TaskTraits.from_any(d["traits"]))

    def checked(self) -> dict[str, Any]:
        """The facts a trial worker compares with the task it built (see :func:`check`)."""
        return {"metric": self.metric, "direction": self.direction, "epochs": self.epochs,
                "train_batches": self.train_batches, **{k: getattr(self.traits, k) for k in CHECKED}}


def measure(task: Any) -> TaskProfile:
    """The profile of a built :class:`autoopt.task.Task` (imports torch through the task)."""
    from autoopt.optimizers import hidden_matrix_params

    train_loader, _ = task.loaders()
    return TaskProfile(metric=task.metric, direction=task.direction, epochs=int(task.epochs),
                       train_batches=len(train_loader), has_matrix_params=bool(hidden_matrix_params(task.build_model())),
                       traits=task.traits())


def check(task: Any) -> dict[str, Any]:
    """What a trial worker reads off the task it built, to compare with :meth:`TaskProfile.checked`."""
    train, _ = task.datasets()
    train_loader, _ = task.loaders()
    return {"metric": task.metric, "direction": task.direction, "epochs": int(task.epochs),
            "train_batches": len(train_loader), "batch_size": int(task.batch_size),
            "dataset_size": len(train), "n_params": int(task.n_params())}


def differences(profile: TaskProfile, built: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{fact: (kept, built)}`` for each fact the built task no longer matches."""
    kept = profile.checked()
    return {k: (kept[k], built.get(k)) for k in kept if built.get(k) != kept[k]}


def corrected(profile: TaskProfile, built: dict[str, Any]) -> TaskProfile:
    """The profile with the built task's checked facts (its measured gradients kept)."""
    from dataclasses import replace

    traits = profile.traits.replace(**{k: built[k] for k in CHECKED if k in built})
    return replace(profile, metric=built.get("metric", profile.metric), direction=built.get("direction", profile.direction),
                   epochs=int(built.get("epochs", profile.epochs)),
                   train_batches=int(built.get("train_batches", profile.train_batches)), traits=traits)


def load(ref: str, options: dict[str, Any]) -> TaskProfile | None:
    """The kept profile of task ``ref`` with ``options``; None when there is none for its present
    source and versions (or the file cannot be read: it is measured again)."""
    path = _path(ref, options)
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return TaskProfile.from_dict(json.load(f))
    except (OSError, ValueError, KeyError, TypeError):  # not there, cut short, or an older shape
        return None


def save(ref: str, options: dict[str, Any], profile: TaskProfile) -> None:
    """Keep ``profile`` for the next study of the task (whole or not at all; never raises)."""
    path = _path(ref, options)
    if path is None:
        return
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json.tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(profile.to_dict(), out)
        os.replace(tmp, path)
    except OSError:  # a read-only home, a full disk: measured again next time
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def forget(ref: str, options: dict[str, Any]) -> None:
    """Drop the kept profile (its task no longer matches it)."""
    path = _path(ref, options)
    if path is not None:
        try:
            path.unlink()
        except OSError:
            pass


def _path(ref: str, options: dict[str, Any]) -> Path | None:
    key = fingerprint(ref, options)
    return None if key is None else cache_dir() / "task-profiles" / f"{key}.json"


def fingerprint(ref: str, options: dict[str, Any]) -> str | None:
    """A hash of everything a profile depends on that can be read without running the task: the
    reference, its options, the task module's source (and its folder's, when small), autoopt's own
    task code, and the versions of autoopt and torch. None where the source cannot be found."""
    if not isinstance(ref, str):
        return None
    module = REFERENCE_TASKS.get(ref, ref).partition(":")[0]
    try:
        spec = importlib.util.find_spec(module)
        task_code = importlib.util.find_spec("autoopt.task")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py") or task_code is None:
        return None
    origin = Path(spec.origin)
    beside = sorted(origin.parent.glob("*.py"))
    files = beside if len(beside) <= FOLDER_FILES_MAX else [origin]
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT, ref, options, _version("autoopt"), _version("torch")], sort_keys=True,
                        default=str).encode())
    try:
        for path in [*files, Path(str(task_code.origin))]:
            h.update(path.name.encode())
            h.update(path.read_bytes())
    except OSError:
        return None
    return h.hexdigest()[:32]


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "-"


__all__ = ["TaskProfile", "check", "corrected", "differences", "fingerprint", "forget", "load", "measure", "save"]
