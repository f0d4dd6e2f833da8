"""Your own PyTorch training loop, tuned by autoopt: optimizer, its hyperparameters, warmup and schedule.

    python examples/torch_loop.py            # about 20 s on 2 CPU cores

The study runs trials on a local Ray, stores them in ./autoopt-studies.db and logs a parent MLflow
run with a nested run per trial to ./mlflow.db (``autoopt ui`` shows them).
"""

import torch
from torch import nn

import autoopt

EPOCHS = 4


def make_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 1).long()  # three classes
    return x, y


def objective(trial: autoopt.Trial) -> float:
    x, y = make_data(1024, seed=0)
    x_val, y_val = make_data(512, seed=1)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
    batch_size = trial.batch_size or 32
    trial.traits(model, (x[:batch_size], y[:batch_size]), nn.functional.cross_entropy, domain="tabular",
                 dataset_size=len(x))  # so the recommender learns about this model
    steps_per_epoch = len(x) // batch_size
    optimizer = trial.optimizer(model)  # the optimizer the study sampled, configured
    scheduler = trial.scheduler(optimizer, total_steps=EPOCHS * steps_per_epoch)  # warmup included
    for epoch in range(1, EPOCHS + 1):
        perm = torch.randperm(len(x))
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            trial.clip_gradients(model)  # to trial.grad_clip, when the study searches clipping
            optimizer.step()
            scheduler.step()
        with torch.no_grad(), trial.evaluating():  # a schedule-free optimizer's averaged weights
            logits = model(x_val)
            accuracy = (logits.argmax(-1) == y_val).float().mean().item()
        trial.log_metrics({"val_loss": nn.functional.cross_entropy(logits, y_val).item()}, step=epoch)
        trial.report(accuracy, step=epoch, train_loss=loss.item())  # raises autoopt.TrialPruned when pruned
    return accuracy


if __name__ == "__main__":
    result = autoopt.run(
        autoopt.StudySpec(
            name="torch-loop", metric="val_accuracy", direction="maximize", max_reports=EPOCHS,
            n_trials=6, workers=2,
            space={"optimizers": ["adamw", "nesterov", "lion"], "schedulers": ["cosine", "constant"]},
        ),
        objective=objective,
    )
    print(f"best val_accuracy {result.best_value:.3f} with {result.best_config}")
