"""Airflow entry point: one DAG per medops family, all from the same factory."""

from medops_factory import FAMILY_DATASET, build_dataset_dag, build_family_dag, load_params

_params = load_params()
for _family in _params.get("orchestration", {}).get("families", []):
    globals()[f"dag_{_family}"] = build_family_dag(_family, _params)
    globals()[f"dataset_{_family}"] = build_dataset_dag(FAMILY_DATASET[_family], _params)
