"""Training hooks by task type (the shared Trainer's TaskModule), reused by every family of that type."""
