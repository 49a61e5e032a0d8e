"""Decoding over a step protocol: sampling and beam search for every model that writes tokens.

A model that decodes offers two methods (`StepModel`):

    step(tokens (N,), state) -> (log_probs (N, V), state)    one more token for each of N sequences
    reorder_state(state, index (M,)) -> state                 the state of rows index[0], index[1], ...

The caller reads the context (a language model's prompt, a translation's source sentence, a
captioner's image) into the first log-probabilities (N, V) and state; from there the same code
samples or searches, whatever the model.
"""

from .beam import Hypothesis, beam_search, best_sequences
from .sampling import StepModel, filter_logits, sample

__all__ = ["Hypothesis", "StepModel", "beam_search", "best_sequences", "filter_logits", "sample"]
