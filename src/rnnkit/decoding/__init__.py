"""Decoding over a step protocol: sampling and beam search."""
