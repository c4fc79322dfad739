"""`vl_fusion` (paper 003): cross-attention vision-language fusion on chest radiographs and their reports —
report generation, image-report matching and triage."""

from medops.families.vl_fusion.family import VLFusion  # noqa: F401  (registers the family)
