"""`transfer_cls`: torchvision backbones with a head sized from the backbone (paper 002, review 001)."""

from medops.models.transfer_cls.net import BACKBONES, TransferClassifier, build_transfer_cls  # noqa: F401
