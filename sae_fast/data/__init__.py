"""Activation sources: synthetic toy data now; transformer activations come with training."""
