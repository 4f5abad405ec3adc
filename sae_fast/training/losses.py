"""The loss terms, for the trainer and for tests: they live with the architectures that use
them (`sae_fast.architectures.losses`); this module names them where training code looks."""

from __future__ import annotations

from ..architectures.losses import JumpReLUSTE, StepL0, auxk, fvu, l1, mse

__all__ = ["JumpReLUSTE", "StepL0", "auxk", "fvu", "l1", "mse"]
