"""medops: MLOps platform for medical-imaging deep learning."""

__version__ = "0.1.0"
