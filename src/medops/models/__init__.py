"""Model registry: families are registered by name (see registry.py)."""

from medops.models.registry import get_model, list_models, register_model  # noqa: F401
from medops.models import fusion_seg as _fusion_seg  # noqa: F401  (registers "fusion_seg")
from medops.models import unet_baselines as _unet_baselines  # noqa: F401  (registers "unet", "attention_unet")
from medops.models import transfer_cls as _transfer_cls  # noqa: F401,E402  (registers "transfer_cls")
