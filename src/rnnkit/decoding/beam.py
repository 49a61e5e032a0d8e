"""Beam search: keep the `beam` likeliest partial sequences at every step.

    step t:   K alive hypotheses x V next tokens -> the 2K best by total log-probability
              -> those ending in eos (among the best K) are finished, the K best others go on

Without an end token every hypothesis runs `length` steps and the likeliest wins, as a language
model continuing a prompt wants. With one, finished hypotheses are ranked by
score / len ** length_penalty, so that longer translations are not punished for their length
alone (Wu et al. 2016 use a similar penalty), and the best `beam` of them are kept. A context's
search ends (or all end at `length`) once it holds `beam` finished hypotheses and the best one
still going, normalised at its length, ranks below all of them: stopping at the first `beam`
finished instead lets early, unlikely ends fill the list before the likely, longer translation
ends (an undertrained number translator wrote "zwei" for "zweihundertfünf" so).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..configs import check_positive_integer
from ..errors import ParameterError
from .sampling import StepModel, sample

MAX_BEAM = 1024  # the widest beam: memory and time grow with it (beam x V scores a step)


@dataclass(frozen=True)
class Hypothesis:
    tokens: list[int]  # the continuation, its end token included
    score: float  # total log-probability
    normalized: float  # score / len(tokens) ** length_penalty, by which hypotheses are ranked


@torch.no_grad()
def beam_search(
    model: StepModel,
    log_probs: Tensor,
    state: object,
    length: int,
    beam: int,
    eos_id: int | None = None,
    length_penalty: float = 0.0,
) -> list[list[Hypothesis]]:
    """Beam search for each of N contexts, from the log-probabilities (N, V) and state they left.

    Returns, per context, up to `beam` finished hypotheses, best first. The beam is at most
    MAX_BEAM; while there are fewer continuations than that (V at the first step), it holds them all.
    """
    check_positive_integer("length", length)
    if isinstance(beam, bool) or not isinstance(beam, int) or not 1 <= beam <= MAX_BEAM:
        raise ParameterError("beam", f"must be an integer from 1 to {MAX_BEAM}, got {beam!r}")
    N, V = log_probs.shape
    device = log_probs.device
    rows = torch.arange(N, device=device)[:, None]  # (N, 1)
    scores = torch.zeros(N, 1, device=device, dtype=torch.float64)  # (N, k): k = 1, then K
    sequences = torch.zeros(N, 1, 0, dtype=torch.long, device=device)  # (N, k, t)
    finished: list[list[Hypothesis]] = [[] for _ in range(N)]
    done = [False] * N  # no hypothesis still going can enter the context's best `beam`

    def normalize(score: float, n_tokens: int) -> float:
        return score / n_tokens ** length_penalty if length_penalty else score

    def finish(n: int, tokens: Tensor, score: float) -> None:
        """Keep the hypothesis if it is among the best `beam` finished so far."""
        ids, kept = tokens.tolist(), finished[n]
        hypothesis = Hypothesis(ids, score, normalize(score, len(ids)))
        if len(kept) < beam:
            kept.append(hypothesis)
            return
        worst = min(range(len(kept)), key=lambda i: kept[i].normalized)
        if hypothesis.normalized > kept[worst].normalized:
            kept[worst] = hypothesis

    for t in range(length):
        k = scores.shape[1]
        total = scores[:, :, None] + log_probs.double().view(N, k, V)  # (N, k, V)
        # the hypotheses that go on: the best `beam`, or all there are; each parent has one eos among
        # its V candidates, so the best 2 * beam hold at least `beam` that do not end
        K = min(beam, k * V if eos_id is None else k * (V - 1))
        C = min(K if eos_id is None else 2 * K, k * V)
        cand_scores, cand = total.view(N, -1).topk(C)  # (N, C), best first
        parent, token = cand // V, cand % V
        if eos_id is None:
            keep = torch.arange(K, device=device).expand(N, K)
        else:
            ends = token == eos_id
            for n, c in ends[:, : min(beam, C)].nonzero().tolist():
                if not done[n]:
                    finish(n, torch.cat([sequences[n, parent[n, c]], token[n, c, None]]), float(cand_scores[n, c]))
            alive = ~ends
            keep = (alive & (alive.cumsum(1) <= K)).float().argsort(dim=1, descending=True, stable=True)[:, :K]  # (N, K)
        parent, token, scores = parent.gather(1, keep), token.gather(1, keep), cand_scores.gather(1, keep)
        sequences = torch.cat([sequences[rows, parent], token[:, :, None]], dim=2)  # (N, K, t + 1)
        if eos_id is not None:
            # log-probabilities only fall: the best going on ends no higher than its score now (with a
            # length penalty, normalised at its present length, the heuristic Hugging Face's search uses)
            for n in range(N):
                if not done[n] and len(finished[n]) >= beam and K > 0:
                    done[n] = normalize(float(scores[n, 0]), t + 2) <= min(h.normalized for h in finished[n])
        if all(done) or t == length - 1 or K == 0:
            break
        state = model.reorder_state(state, (parent + rows * k).flatten())
        log_probs, state = model.step(token.flatten(), state)  # (N K, V)
    for n in range(N):  # at the length limit: the hypotheses still going compete with those that ended
        for j in range(scores.shape[1]):
            if done[n]:
                break
            finish(n, sequences[n, j], float(scores[n, j]))
    return [sorted(f, key=lambda h: -h.normalized)[:beam] for f in finished]


@torch.no_grad()
def best_sequences(model: StepModel, log_probs: Tensor, state: object, length: int, beam: int, eos_id: int,
                   length_penalty: float = 1.0) -> list[tuple[list[int], float | None]]:
    """The best sequence for each of N contexts, without its end token: greedy decoding for beam
    1 (score None), else the best of `beam_search`'s hypotheses, with its score. What a model that
    writes one answer per context (a translation, a caption) decodes with."""
    if beam == 1:
        steps = torch.stack(list(sample(model, log_probs, state, length, temperature=0, eos_id=eos_id)), 1).cpu()
        found: list[tuple[list[int], float | None]] = [(row.tolist(), None) for row in steps]
    else:
        found = [(f[0].tokens, f[0].score) for f in beam_search(model, log_probs, state, length, beam, eos_id,
                                                                 length_penalty)]
    return [(tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens, score) for tokens, score in found]
