"""tinyfleet: the composition root (CLI, configuration, end-to-end demo). Nothing imports it."""

__version__ = "0.1.0"
