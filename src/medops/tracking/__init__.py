"""MLflow tracking: the only package that imports mlflow."""

from medops.tracking.mlflow_run import (  # noqa: F401
    MlflowLogger, ablation_parent_run, dataset_version, end_run, git_commit, log_artifact, log_artifacts_to, log_metrics,
    log_model, log_new_params, log_params_and_config, mark_run, parent_of, run_status, start_or_resume_run, tracking_uri, ui_command, write_run_file,
)
from medops.tracking.models import ModelRef, resolve_model  # noqa: F401
