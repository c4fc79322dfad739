"""Airflow entry point: one DAG per medops family, all from the same factory."""

from medops_factory import build_dataset_dag, build_family_dag, datasets_of, load_params

_params = load_params()
_simulated = set(_params.get("orchestration", {}).get("simulated", []))
for _family in _params.get("orchestration", {}).get("families", []):
    globals()[f"dag_{_family}"] = build_family_dag(_family, _params)
    for _dataset in datasets_of(_params, _family):
        if _dataset in _simulated:  # your own datasets arrive by `dvc add` / `dvc pull`, not by a generate DAG
            globals()[f"dataset_{_dataset.replace('-', '_')}"] = build_dataset_dag(_dataset, _params)
