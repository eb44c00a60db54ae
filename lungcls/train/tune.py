"""Hyperparameter search: Ray Tune with ASHA over Ray Train runs.

    lungcls tune [--dataset NAME] [--version N] [--trials 8]

Each trial is a full Ray Train run (the same `make_trainer` as `lungcls train`) with its
own learning rate, weight decay, width and augmentation strength; its per-epoch metrics
reach Tune through `TuneReportCallback`, and ASHA stops the trials that fall behind. The
best trial's best checkpoint is published as the candidate model version, with the search
recorded beside it.
"""

from __future__ import annotations

import time
from typing import Any

from lungcls.config import Settings
from lungcls.dataset.build import load_manifest
from lungcls.io.compute import ensure_ray
from lungcls.io.runs import new_run_id
from lungcls.io.storage import Storage
from lungcls.train.trainer import TrainError, TrainResult, make_trainer, publish_best

SEARCH_SPACE_NOTE = "learning_rate log-uniform, weight_decay log-uniform, width, augment_strength"


def search_space() -> dict[str, Any]:
    from ray import tune

    return {
        "learning_rate": tune.loguniform(3e-4, 1e-2),
        "weight_decay": tune.loguniform(1e-5, 1e-2),
        "width": tune.choice([8, 16, 24]),
        "augment_strength": tune.uniform(0.0, 1.5),
    }


def trial_settings(settings: Settings, config: dict[str, Any]) -> Settings:
    """The settings of one trial: the searched values over the configured ones."""
    train = settings.train.model_copy(
        update={
            "learning_rate": config["learning_rate"],
            "weight_decay": config["weight_decay"],
            "augment_strength": config["augment_strength"],
            "epochs": settings.tune.max_epochs,
        }
    )
    model = settings.model.model_copy(update={"width": config["width"]})
    return settings.model_copy(update={"train": train, "model": model})


def tune_model(
    settings: Settings, dataset: str | None = None, version: int | None = None
) -> TrainResult:
    """Search hyperparameters; publish the best trial as a new model version."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback
    from ray.tune.schedulers import ASHAScheduler

    started = time.monotonic()
    storage = Storage.from_settings(settings)
    manifest = load_manifest(storage, dataset or settings.dataset.name, version)
    search_id = new_run_id("tune")
    ensure_ray(settings)

    def run_trial(config: dict[str, Any]) -> None:
        trial = tune.get_context().get_trial_id()
        trainer = make_trainer(
            trial_settings(settings, config),
            manifest,
            f"{search_id}-{trial}",
            callbacks=[TuneReportCallback()],
        )
        trainer.fit()

    filesystem, root = storage.arrow_filesystem()
    tuner = tune.Tuner(
        # The trial itself only waits on its TorchTrainer: give it (almost) no CPU, or on small
        # machines it takes the core that Ray Data needs.
        tune.with_resources(run_trial, {"cpu": 0.01}),
        param_space=search_space(),
        tune_config=tune.TuneConfig(
            metric="val_auc",
            mode="max",
            num_samples=settings.tune.trials,
            max_concurrent_trials=1,  # each trial is already a distributed run
            scheduler=ASHAScheduler(
                time_attr="epoch",
                max_t=settings.tune.max_epochs,
                grace_period=min(settings.tune.grace_period, settings.tune.max_epochs),
            ),
            trial_name_creator=lambda t: t.trial_id,
            trial_dirname_creator=lambda t: t.trial_id,
        ),
        run_config=tune.RunConfig(
            name=search_id, storage_path=f"{root}/ray-tune", storage_filesystem=filesystem
        ),
    )
    grid = tuner.fit()
    best = grid.get_best_result(metric="val_auc", mode="max", scope="all")
    if best is None or best.config is None:
        raise TrainError(f"hyperparameter search {search_id} produced no result")
    trial_id = best.path.rstrip("/").rsplit("/", 1)[-1]
    run_id = f"{search_id}-{trial_id}"
    from ray.train import Result

    filesystem, storage_path = storage.arrow_filesystem()
    result = Result.from_path(f"{storage_path}/ray-train/{run_id}", storage_filesystem=filesystem)
    trials = [
        {
            "config": r.config,
            "val_auc": (r.metrics or {}).get("val_auc"),
            "epochs": (r.metrics or {}).get("epoch", -1) + 1,
        }
        for r in grid
    ]
    extra = {
        "tune": {
            "search": search_id,
            "space": SEARCH_SPACE_NOTE,
            "trials": trials,
            "best_trial": trial_id,
            "best_config": best.config,
        }
    }
    outcome = publish_best(trial_settings(settings, best.config), manifest, run_id, result, extra)
    outcome.seconds = time.monotonic() - started
    return outcome
