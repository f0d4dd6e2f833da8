"""A PyTorch Lightning module tuned by autoopt: configure_optimizers returns the trial's optimizer and
schedule, a callback reports the validation accuracy and prunes.

    pip install 'autoopt[lightning]'
    python examples/lightning_module.py      # about 40 s on 2 CPU cores
"""

import lightning.pytorch as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import autoopt
from autoopt.integrations import lightning as autoopt_lightning

EPOCHS = 3


def make_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    return TensorDataset(x, (x[:, :3].sum(1) > 0).long())


class Classifier(L.LightningModule):
    def __init__(self, trial: autoopt.Trial):
        super().__init__()
        self.trial = trial
        self.net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))

    def training_step(self, batch, _):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_accuracy", (self.net(x).argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        return autoopt_lightning.configure_optimizers(self.trial, self)


def objective(trial: autoopt.Trial) -> float:
    batch_size = trial.batch_size or 32
    train = DataLoader(make_data(1024, 0), batch_size=batch_size, shuffle=True)
    val = DataLoader(make_data(512, 1), batch_size=512)
    trainer = L.Trainer(
        max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[autoopt_lightning.TrialCallback(trial, monitor="val_accuracy")],
    )
    trainer.fit(Classifier(trial), train, val)
    return trainer.callback_metrics["val_accuracy"].item()


if __name__ == "__main__":
    result = autoopt.run(
        autoopt.StudySpec(
            name="lightning-module", metric="val_accuracy", direction="maximize", max_reports=EPOCHS,
            n_trials=4, workers=2, space={"optimizers": ["adamw", "radam", "nesterov"], "schedulers": ["cosine"]},
        ),
        objective=objective,
    )
    print(f"best val_accuracy {result.best_value:.3f} with {result.best_config}")
