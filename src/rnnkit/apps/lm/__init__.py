"""Recurrent language models: the model, its presets, and prediction and generation."""
