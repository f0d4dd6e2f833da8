"""Objectives written with the Lightning and Hugging Face integrations, for the tests (importable by Ray workers).

Same data and space as helper_objectives: AdamW learns, SGD at lr 1e-6 stays near chance and is pruned.
"""

from __future__ import annotations

import tempfile

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import autoopt
from helper_objectives import data, mlp

EPOCHS = 3
#: (stage, the optimizer's schedule-free train_mode or None) seen in each step, for the tests in this process
MODES: list[tuple[str, object]] = []


def lightning_objective(trial: autoopt.Trial) -> float:
    import lightning.pytorch as L

    from autoopt.integrations import lightning as autoopt_lightning

    class Classifier(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()

        def training_step(self, batch, _):
            MODES.append(("train", self.trainer.optimizers[0].param_groups[0].get("train_mode")))
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch, _):
            MODES.append(("val", self.trainer.optimizers[0].param_groups[0].get("train_mode")
                          if self.trainer.optimizers else None))
            x, y = batch
            self.log("val_acc", (self.net(x).argmax(-1) == y).float().mean())

        def configure_optimizers(self):
            return autoopt_lightning.configure_optimizers(trial, self)

    train = DataLoader(TensorDataset(*data()), batch_size=trial.batch_size or 32, shuffle=True)
    val = DataLoader(TensorDataset(*data(256, seed=1)), batch_size=256)
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[autoopt_lightning.TrialCallback(trial, monitor="val_acc")])
    trainer.fit(Classifier(), train, val)
    return trainer.callback_metrics["val_acc"].item()


VOCAB = 16


def token_data(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, 6), generator=g)
    labels = (ids[:, 0] < VOCAB // 2).long()
    return [{"input_ids": i, "attention_mask": torch.ones_like(i), "labels": y} for i, y in zip(ids, labels)]


def tiny_bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=8, num_labels=2))


def hf_objective(trial: autoopt.Trial) -> float:
    from transformers import Trainer

    from autoopt.integrations import hf as autoopt_hf

    model = tiny_bert()
    train, val = token_data(256, 0), token_data(128, 1)
    trial.traits(model, {k: torch.stack([row[k] for row in train[:32]]) for k in train[0]}, domain="nlp",
                 dataset_size=len(train))
    with tempfile.TemporaryDirectory() as out:
        args = autoopt_hf.training_arguments(
            trial, output_dir=out, num_train_epochs=EPOCHS, per_device_train_batch_size=32,
            per_device_eval_batch_size=128, eval_strategy="epoch", save_strategy="no", logging_strategy="epoch",
            report_to=[], disable_tqdm=True, use_cpu=True)
        trainer = Trainer(
            model=model, args=args, train_dataset=train, eval_dataset=val,
            compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())},
            optimizers=autoopt_hf.optimizers(trial, model, total_steps=EPOCHS * len(train) // 32),
            callbacks=[autoopt_hf.TrialCallback(trial, metric="eval_accuracy")])
        trainer.train()
        return trainer.evaluate()["eval_accuracy"]
