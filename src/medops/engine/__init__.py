"""One trainer with hooks for every family."""

from medops.engine.trainer import TaskModule, Trainer, load_checkpoint, pick_device, seed_everything  # noqa: F401
