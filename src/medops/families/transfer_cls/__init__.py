"""`transfer_cls` (paper 002 + review 001): rare-disease classification by transfer learning."""

from medops.families.transfer_cls.family import TransferCls  # noqa: F401  (registers the family)
