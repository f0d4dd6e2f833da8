"""A Hugging Face transformers.Trainer tuned by autoopt: the trial's (optimizer, scheduler) as
``optimizers=``, a TrainerCallback reports each evaluation and prunes.

The model is a tiny BERT built from a config (nothing is downloaded) on token ids made up here: a
sequence's label is whether its first token is in the lower half of the vocabulary.

    pip install 'autoopt[hf]'
    python examples/hf_trainer.py            # about 50 s on 2 CPU cores
"""

import tempfile

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer

import autoopt
from autoopt.integrations import hf as autoopt_hf

EPOCHS = 3
VOCAB = 32


def make_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, 8), generator=g)
    labels = (ids[:, 0] < VOCAB // 2).long()
    return [{"input_ids": i, "attention_mask": torch.ones_like(i), "labels": y} for i, y in zip(ids, labels)]


def accuracy(prediction):
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def objective(trial: autoopt.Trial) -> float:
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=16, num_labels=2,
    ))
    train, val = make_data(256, 0), make_data(128, 1)
    with tempfile.TemporaryDirectory() as out:
        args = autoopt_hf.training_arguments(
            trial, output_dir=out, num_train_epochs=EPOCHS, per_device_eval_batch_size=256,
            eval_strategy="epoch", save_strategy="no", logging_strategy="epoch", report_to=[],
            disable_tqdm=True, use_cpu=True,
        )
        steps = EPOCHS * -(-len(train) // args.per_device_train_batch_size)
        trainer = Trainer(
            model=model, args=args, train_dataset=train, eval_dataset=val, compute_metrics=accuracy,
            optimizers=autoopt_hf.optimizers(trial, model, total_steps=steps),
            callbacks=[autoopt_hf.TrialCallback(trial, metric="eval_accuracy")],
        )
        trainer.train()
        return trainer.evaluate()["eval_accuracy"]


if __name__ == "__main__":
    result = autoopt.run(
        autoopt.StudySpec(
            name="hf-trainer", metric="eval_accuracy", direction="maximize", max_reports=EPOCHS,
            n_trials=4, workers=2,
            space={"optimizers": ["adamw", "lamb"], "params": {"*": {"lr": {"low": 1e-3, "high": 1e-2}}},
                   "schedulers": ["linear", "cosine"], "batch_size": [32, 64]},
        ),
        objective=objective,
    )
    print(f"best eval_accuracy {result.best_value:.3f} with {result.best_config}")
