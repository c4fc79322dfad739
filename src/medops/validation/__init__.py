"""Validation gate: Great Expectations suites as code over manifest and image statistics."""

from medops.validation.gate import DatasetSpec, require_passed, validate_dataset  # noqa: F401
