"""MLflow tracking: the only module that imports mlflow."""

from medops.tracking.mlflow_run import (  # noqa: F401
    MlflowLogger, dataset_version, end_run, git_commit, log_artifact, log_model, log_params_and_config,
    start_or_resume_run, tracking_uri, ui_command,
)
