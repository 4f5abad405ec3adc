"""Training: a minimal loop for synthetic checks now; the full trainer comes later."""

from .basic import fit, normalize_decoder_rows, project_decoder_grad

__all__ = ["fit", "normalize_decoder_rows", "project_decoder_grad"]
