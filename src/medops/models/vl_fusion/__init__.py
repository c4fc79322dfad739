"""`vl_fusion` (paper 003): cross-attention vision-language fusion for radiographs and reports (registered by name)."""

from medops.models.vl_fusion.net import CBAM, FUSIONS, LSTMAttention, VLFusion  # noqa: F401
