"""Rendering a token in its context as text (the demo's console output)."""

from __future__ import annotations


def render_context(tokenizer, window: list[int], position: int, width: int = 8) -> str:
    """The text around one token, the token itself marked as [[token]]."""
    lo, hi = max(0, position - width), min(len(window), position + width + 1)
    left = tokenizer.decode(window[lo:position], skip_special_tokens=True)
    tok = tokenizer.decode(window[position : position + 1])
    right = tokenizer.decode(window[position + 1 : hi], skip_special_tokens=True)
    return f"{left} [[{tok.strip()}]] {right}".replace("\n", " ").strip()
