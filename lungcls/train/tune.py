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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lungcls.config import Settings
from lungcls.dataset.manifest import Manifest, load_manifest
from lungcls.io.compute import ensure_ray
from lungcls.io.records import Part
from lungcls.io.runs import new_run_id
from lungcls.io.storage import Storage
from lungcls.registry.records import TuneSummary, TuneTrial
from lungcls.train.trainer import TrainError, TrainResult, make_trainer, publish_best

if TYPE_CHECKING:
    from ray.train import Result
    from ray.tune import ResultGrid, Tuner

SEARCH_SPACE_NOTE = "learning_rate log-uniform, weight_decay log-uniform, width, augment_strength"


class TrialConfig(Part):
    """The hyperparameters of one trial (one field per key of `search_space`)."""

    learning_rate: float
    weight_decay: float
    width: int
    augment_strength: float


def search_space() -> dict[str, Any]:
    """Where `TrialConfig` is sampled from. Tune's `param_space` is a dict of sampling
    domains by Tune's API; its keys are `TrialConfig`'s fields."""
    from ray import tune

    return {
        "learning_rate": tune.loguniform(3e-4, 1e-2),
        "weight_decay": tune.loguniform(1e-5, 1e-2),
        "width": tune.choice([8, 16, 24]),
        "augment_strength": tune.uniform(0.0, 1.5),
    }


def trial_settings(settings: Settings, trial: TrialConfig) -> Settings:
    """The settings of one trial: the searched values over the configured ones."""
    train = settings.train.model_copy(
        update={
            "learning_rate": trial.learning_rate,
            "weight_decay": trial.weight_decay,
            "augment_strength": trial.augment_strength,
            "epochs": settings.tune.max_epochs,
        }
    )
    model = settings.model.model_copy(update={"width": trial.width})
    return settings.model_copy(update={"train": train, "model": model})


def tune_model(
    settings: Settings, dataset: str | None = None, version: int | None = None
) -> TrainResult:
    """Search hyperparameters; publish the best trial as a new model version."""
    started = time.monotonic()
    storage = Storage.from_settings(settings)
    manifest = load_manifest(storage, dataset or settings.dataset.name, version)
    search_id = new_run_id("tune")
    ensure_ray(settings)
    grid = _tuner(settings, manifest, search_id, storage).fit()
    best = grid.get_best_result(metric="val_auc", mode="max", scope="all")
    if best is None or best.config is None:
        raise TrainError(f"hyperparameter search {search_id} produced no result")
    trial_id = best.path.rstrip("/").rsplit("/", 1)[-1]
    run_id = f"{search_id}-{trial_id}"
    best_config = TrialConfig.model_validate(best.config)
    search = _search_summary(grid, search_id, trial_id, best_config)
    best_settings = trial_settings(settings, best_config)
    result = _trial_result(storage, run_id)
    outcome = publish_best(best_settings, manifest, run_id, result, search)
    return outcome.model_copy(update={"seconds": time.monotonic() - started})


def _run_trial(settings: Settings, manifest: Manifest, search_id: str) -> Callable[..., None]:
    """The trainable of one trial: a Ray Train run under the trial's own run id."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    def run_trial(config: dict[str, Any]) -> None:  # Tune passes the sample as a dict
        trial = tune.get_context().get_trial_id()
        trainer = make_trainer(
            trial_settings(settings, TrialConfig.model_validate(config)),
            manifest,
            f"{search_id}-{trial}",
            callbacks=[TuneReportCallback()],
        )
        trainer.fit()

    return run_trial


def _tuner(settings: Settings, manifest: Manifest, search_id: str, storage: Storage) -> Tuner:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    filesystem, root = storage.arrow_filesystem()
    return tune.Tuner(
        # The trial itself only waits on its TorchTrainer: give it (almost) no CPU, or on small
        # machines it takes the core that Ray Data needs.
        tune.with_resources(_run_trial(settings, manifest, search_id), {"cpu": 0.01}),
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


def _search_summary(
    grid: ResultGrid, search_id: str, best_trial: str, best_config: TrialConfig
) -> TuneSummary:
    """The search as `model.json` records it: every trial's sample and result."""
    trials = [
        TuneTrial(
            config=r.config or {},
            val_auc=(r.metrics or {}).get("val_auc"),
            epochs=(r.metrics or {}).get("epoch", -1) + 1,
        )
        for r in grid
    ]
    return TuneSummary(
        search=search_id,
        space=SEARCH_SPACE_NOTE,
        trials=trials,
        best_trial=best_trial,
        best_config=best_config.model_dump(),
    )


def _trial_result(storage: Storage, run_id: str) -> Result:
    """The Ray Train result of one trial's run, read back from storage."""
    from ray.train import Result

    filesystem, root = storage.arrow_filesystem()
    return Result.from_path(f"{root}/ray-train/{run_id}", storage_filesystem=filesystem)
