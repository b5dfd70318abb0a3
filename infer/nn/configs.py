"""The config helpers live in :mod:`infer.configs` (torch-free); this name stays for the model code."""

from infer.configs import ConfigError, check_config_keys

__all__ = ["ConfigError", "check_config_keys"]
