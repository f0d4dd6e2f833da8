"""What one trial produces: per-epoch curve and outcome. Plain data, so it crosses Ray and MLflow."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

TrialStatus = Literal["complete", "pruned", "failed"]


@dataclass
class EpochRecord:
    """One point of a learning curve: an evaluation after an epoch (or every N steps)."""

    epoch: int
    train_loss: float
    val_metric: float
    lr: float
    seconds: float
    step: int = 0  # with eval_every_steps: optimizer steps taken at this evaluation (else 0)

    @property
    def key(self) -> int:
        """The curve's x value: the optimizer step with eval_every_steps, else the epoch."""
        return int(self.step or self.epoch)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrialOutcome:
    """How a trial ended. ``value`` is the best validation metric seen (None when failed early)."""

    status: TrialStatus
    value: float | None
    history: list[EpochRecord] = field(default_factory=list)
    reason: str | None = None
    stopped_at_epoch: int | None = None
    optimizer_state_bytes: int = 0
    device: str = "cpu"
    host: str = ""
    seconds: float = 0.0

    @property
    def epochs_run(self) -> int:
        return len(self.history)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["epochs_run"] = self.epochs_run
        return d
