"""Typed parameters of the Prefect flows (`flows/`): the Prefect UI renders them as a form
with these descriptions; the CLI builds them to run a flow."""

from __future__ import annotations

from pydantic import BaseModel, Field

from lungcls.config import Settings, load_settings


class RunParameters(BaseModel):
    """Where to work and with which settings (both optional: the worker's environment and
    `lungcls.yaml` decide by default)."""

    config_file: str | None = Field(
        None,
        description="Path to a lungcls YAML config on the worker; default: $LUNGCLS_CONFIG, "
        "else ./lungcls.yaml, else the built-in defaults.",
    )
    root: str | None = Field(
        None,
        description="Storage root overriding the config: s3://bucket/prefix or a folder. "
        "Credentials come from the worker's AWS environment, never from here.",
    )

    def settings(self) -> Settings:
        overrides = {"root": self.root} if self.root else {}
        return load_settings(self.config_file, **overrides)

    def where(self) -> RunParameters:
        """Only where to work: what every subflow of `retrain` is given."""
        return RunParameters(config_file=self.config_file, root=self.root)


class IngestParameters(RunParameters):
    batch: str | None = Field(
        None, description="Ingest only inbox/<batch>/; default: every new or changed archive."
    )
    retry_rejected: bool = Field(
        False,
        description="Read again the archives refused before (or with refused files or "
        "series), e.g. after installing a decoder; done by itself when ingest settings change.",
    )


class RetrainParameters(IngestParameters):
    force: bool = Field(
        False,
        description="Train, evaluate and gate even when no new series arrived, ignoring "
        "cached results of earlier runs.",
    )

    def for_ingest(self) -> IngestParameters:
        return IngestParameters(**self.model_dump(include=set(IngestParameters.model_fields)))

    def for_train(self, dataset_version: int) -> TrainParameters:
        return TrainParameters(
            **self.where().model_dump(), dataset_version=dataset_version, force=self.force
        )

    def for_monitor(self, ingest_run: str) -> MonitorParameters:
        return MonitorParameters(**self.where().model_dump(), ingest_run=ingest_run)

    def for_evaluate(self, model_version: int) -> EvaluateParameters:
        return EvaluateParameters(**self.where().model_dump(), model_version=str(model_version))


class MonitorParameters(RunParameters):
    ingest_run: str = Field(description="The ingest run whose new batches to monitor.")


class TrainParameters(RunParameters):
    dataset_version: int | None = Field(
        None, description="The dataset version to train on; default: the latest."
    )
    force: bool = Field(False, description="Train again even if a cached model exists.")


class EvaluateParameters(RunParameters):
    model_version: str = Field(
        "latest",
        description="The model version to evaluate and gate: a number, 'latest', or an alias "
        "such as 'champion'.",
    )
    force: bool = Field(False, description="Evaluate again even if a report exists.")

    @property
    def model_ref(self) -> str | None:
        """The version or alias to resolve; None: the latest."""
        return None if self.model_version == "latest" else self.model_version
