"""Exceptions with messages a user can act on. Each is also a standard exception type."""

from __future__ import annotations


class SAEFastError(Exception):
    """Base of every sae_fast error."""


class ConfigError(SAEFastError, ValueError):
    """A configuration (arguments or cfg.json) is missing a key or has a wrong value/type."""


class FormatError(SAEFastError, ValueError):
    """A file on disk is missing, truncated, corrupt, or does not match its config."""


class BackendUnavailableError(SAEFastError, RuntimeError):
    """The requested compute backend is not available on this machine or build."""


class DataError(SAEFastError, ValueError):
    """Input data cannot be used: NaN/Inf activations, or a loss that is no longer finite."""
