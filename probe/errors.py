"""Exceptions with messages that say what to do. The CLI prints them as one line, exit code 2."""

from __future__ import annotations


class ProbeError(ValueError):
    """Base class of every error the toolkit raises on bad input."""


class UnknownModelError(ProbeError):
    """The model spec is neither a known name, a local directory, a .gguf file nor a cached hub id."""


class ModelLoadError(ProbeError):
    """A model file or folder exists but cannot be read (corrupt GGUF, no weights, bad config)."""


class UnsupportedArchitectureError(ProbeError):
    """The model's ``config.model_type`` has no adapter in :mod:`probe.arch`."""


class HookPointError(ProbeError):
    """A hook-point name or pattern matches nothing on this model."""


class LayerError(ProbeError):
    """A layer index is out of range."""


class EmptyInputError(ProbeError):
    """Text or token input is empty."""


class EditError(ProbeError):
    """A weight or residual edit addresses rows or positions that do not exist."""
