"""CTC decoding: greedy, and prefix beam search with shallow fusion of a language model.

A CTC model gives, per frame t, log-probabilities y_t (C,) over an alphabet whose index 0 is the
blank. A path (one symbol per frame) reads as a labelling by merging repeats, then dropping blanks
("aa_a_bb" -> "aab"); a labelling's probability sums over every path that reads as it.

Greedy decoding reads the path of each frame's likeliest symbol. Prefix beam search (Hannun et al.
2014) keeps the `beam` likeliest labelling prefixes l, each with the probability of the paths so
far that read as l and end in a blank, p_b, or in l's last label, p_nb. A frame moves them on:

    l     <- (p_b + p_nb) y(blank) + p_nb y(last of l)     a blank, or l's last label again (merged)
    l + c <- (p_b + p_nb) y(c), or p_b y(c) when c is l's last label (a repeat needs a blank between)

It merges the paths of a labelling, which greedy decoding does not: even with a beam of 1 it can
answer better than greedy when frames are uncertain; on peaked frames the two agree. Shallow fusion
ranks prefixes by

    log(p_b + p_nb) + lm_weight * log P_lm(l) + word_bonus * words(l)

where a char LM scores each label as it is appended and a word LM each word as it is completed (by
a space, or by the end of the transcript). Prefixes live in a trie of integer nodes, so extending
one is a dict lookup; each node's LM context is made once, by one model step per frame for all the
prefixes new to the beam.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

from ...configs import check_positive_integer
from ...data import Tokenizer
from ...errors import ParameterError, RnnkitError
from ...nn.cells import State
from ..lm import RNNLanguageModel, read_prompts

NEG_INF = -math.inf


def greedy_decode(log_probs: Tensor, blank: int = 0) -> list[int]:
    """The labelling of the likeliest path of log_probs (T, C): argmax, merge repeats, drop blanks."""
    best = log_probs.argmax(dim=-1).unique_consecutive()  # (T',)
    return best[best != blank].tolist()


def greedy_batch(log_probs: Tensor, lengths: Tensor | Sequence[int], blank: int = 0) -> list[list[int]]:
    """`greedy_decode` of each sequence of log_probs (T, B, C), the b-th its first lengths[b] frames."""
    best = log_probs.argmax(dim=-1)  # (T, B)
    T = best.shape[0]
    lengths = torch.as_tensor(lengths, device=best.device)
    changed = torch.ones_like(best, dtype=torch.bool)
    changed[1:] = best[1:] != best[:-1]
    keep = changed & (best != blank) & (torch.arange(T, device=best.device)[:, None] < lengths)  # (T, B)
    return [column[mask].tolist() for column, mask in zip(best.T, keep.T)]


class LanguageModelScorer(Protocol):
    """A language model as shallow fusion sees it: a transcript grows one character at a time,
    and a context stands for what the model has read of it."""

    def start(self) -> Any:
        """The context of the empty transcript."""

    def score(self, context: Any, char: str) -> float:
        """log P_lm of appending `char` to the transcript of `context` (0 while a word LM waits
        for the word's end)."""

    def advance(self, contexts: Sequence[Any], chars: Sequence[str]) -> list[Any]:
        """The context of each transcript with chars[i] appended to contexts[i]'s: the model is
        stepped once for all of them."""

    def finish(self, context: Any) -> float:
        """log P_lm of what the transcript's end completes (a word LM's last word), else 0."""


def _logaddexp(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    return a if b == NEG_INF else a + math.log1p(math.exp(b - a))


@torch.no_grad()
def prefix_beam_search(
    log_probs: Tensor,
    alphabet: str,
    beam: int = 16,
    lm: LanguageModelScorer | None = None,
    lm_weight: float = 0.0,
    word_bonus: float = 0.0,
    prune: float = 10.0,
    chars_per_frame: int = 8,
) -> list[int]:
    """The best labelling of log_probs (T, C), log-softmaxed over `alphabet` (C characters, index 0
    the blank), by CTC prefix beam search.

    Each frame extends the prefixes by at most `chars_per_frame` labels, those less than `prune`
    nats below the frame's likeliest symbol (the blank and a prefix's own last label are always
    weighed). `lm` is queried only when lm_weight is not 0; words, for word_bonus, are separated
    by spaces.
    """
    if log_probs.dim() != 2 or log_probs.shape[1] != len(alphabet):
        raise ParameterError("log_probs", f"must be (T, {len(alphabet)}), got {tuple(log_probs.shape)}")
    check_positive_integer("beam", beam)
    check_positive_integer("chars_per_frame", chars_per_frame)
    T, C = log_probs.shape
    blank, space = 0, alphabet.find(" ")  # -1: no words to count
    if not prune > 0:
        raise ParameterError("prune", f"must be positive (nats), got {prune!r}")
    log_probs = log_probs.detach().double().cpu()
    rows = log_probs.tolist()
    # the labels each frame extends prefixes by; one more than asked, as the blank may be among them
    values, indices = log_probs.topk(min(chars_per_frame + 1, C), dim=1)  # (T, k)
    tried = (values >= values[:, :1] - prune) & (indices != blank)
    extensions = [[c for c, ok in zip(i, m) if ok][:chars_per_frame]
                  for i, m in zip(indices.tolist(), tried.tolist())]

    scorer = lm if lm_weight != 0 else None
    # the trie: node 0 is the empty prefix; extra = lm_weight * log P_lm + word_bonus * words
    parent, label, extra = [-1], [-1], [0.0]
    children: dict[int, int] = {}  # node * C + label -> child node
    contexts: list[Any] = [scorer.start() if scorer is not None else None]
    beams: dict[int, list[float]] = {0: [0.0, NEG_INF]}  # node -> [log p_b, log p_nb]
    for t in range(T):
        y = rows[t]
        following: dict[int, list[float]] = {}
        for node, (pb, pnb) in beams.items():
            total = _logaddexp(pb, pnb)
            last = label[node]
            b, nb = total + y[blank], (pnb + y[last] if last >= 0 else NEG_INF)
            if (entry := following.get(node)) is None:
                following[node] = [b, nb]
            else:
                entry[0], entry[1] = _logaddexp(entry[0], b), _logaddexp(entry[1], nb)
            for c in extensions[t]:
                child = children.get(node * C + c)
                if child is None:
                    child = children[node * C + c] = len(label)
                    parent.append(node)
                    label.append(c)
                    starts_word = c != space and (last == space or last < 0)
                    lm_score = scorer.score(contexts[node], alphabet[c]) if scorer is not None else 0.0
                    extra.append(extra[node] + (word_bonus if starts_word else 0.0) + lm_weight * lm_score)
                    contexts.append(None)
                nb = (pb if c == last else total) + y[c]
                if (entry := following.get(child)) is None:
                    following[child] = [NEG_INF, nb]
                else:
                    entry[1] = _logaddexp(entry[1], nb)
        beams = dict(heapq.nlargest(beam, following.items(), key=lambda item: _logaddexp(*item[1]) + extra[item[0]]))
        if scorer is not None and (new := [n for n in beams if contexts[n] is None]):
            advanced = scorer.advance([contexts[parent[n]] for n in new], [alphabet[label[n]] for n in new])
            for n, context in zip(new, advanced):
                contexts[n] = context

    final = {node: _logaddexp(pb, pnb) + extra[node]
             + (lm_weight * scorer.finish(contexts[node]) if scorer is not None else 0.0)
             for node, (pb, pnb) in beams.items()}
    node = max(final, key=final.__getitem__)
    labels = []
    while node > 0:
        labels.append(label[node])
        node = parent[node]
    return labels[::-1]


def _gather(model: RNNLanguageModel, states: Sequence[State], columns: Sequence[int]) -> State:
    """One batch (L, n, H) of the sequences columns[i] of states[i] (batches (L, B_i, H) each
    part): one reorder of each distinct batch, joined, then put back in order."""
    groups: dict[int, tuple[State, list[int], list[int]]] = {}  # id(batch) -> (batch, columns, positions)
    for i, (state, column) in enumerate(zip(states, columns)):
        group = groups.setdefault(id(state), (state, [], []))
        group[1].append(column)
        group[2].append(i)
    device = (states[0][0] if isinstance(states[0], tuple) else states[0]).device
    parts = [model.reorder_state(state, torch.tensor(cols, device=device)) for state, cols, _ in groups.values()]
    if len(parts) == 1:
        return parts[0]
    joined = (tuple(torch.cat(p, dim=1) for p in zip(*parts)) if isinstance(parts[0], tuple)
              else torch.cat(parts, dim=1))
    order = torch.tensor([i for _, _, positions in groups.values() for i in positions], device=device)
    return model.reorder_state(joined, order.argsort())


def _token_id(tokenizer: Tokenizer, token: str) -> int:
    try:
        return tokenizer.id(token)
    except RnnkitError:
        return tokenizer.unk_id


class _CharContext(NamedTuple):
    log_probs: list[float]  # (V,): log P_lm of each character next
    state: State  # (L, B, H) each part: the batch this context's state was stepped in
    column: int  # which of its B sequences


class CharLMScorer:
    """A char language model (tokenizer.kind "char") scoring each character as it is appended:
    log P(c | the transcript so far, from a line start); characters it does not know read as <unk>."""

    def __init__(self, model: RNNLanguageModel, tokenizer: Tokenizer) -> None:
        if tokenizer.kind != "char":
            raise RnnkitError(f"CharLMScorer needs a char language model, got a {tokenizer.kind} one")
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.ids = {tokenizer.token(i): i for i in range(tokenizer.vocab_size)}  # character -> LM id
        self.unk = tokenizer.unk_id

    def start(self) -> _CharContext:
        log_probs, state = read_prompts(self.model, self.tokenizer, [""])  # after the line end
        return _CharContext(log_probs[0].tolist(), state, 0)

    def score(self, context: _CharContext, char: str) -> float:
        return context.log_probs[self.ids.get(char, self.unk)]

    @torch.no_grad()
    def advance(self, contexts: Sequence[_CharContext], chars: Sequence[str]) -> list[_CharContext]:
        tokens = torch.tensor([self.ids.get(c, self.unk) for c in chars], device=self.device)  # (n,)
        state = _gather(self.model, [c.state for c in contexts], [c.column for c in contexts])  # (L, n, H)
        log_probs, state = self.model.step(tokens, state)  # (n, V)
        return [_CharContext(row, state, i) for i, row in enumerate(log_probs.tolist())]

    def finish(self, context: _CharContext) -> float:
        return 0.0


class _WordContext(NamedTuple):
    log_probs: Tensor  # (V,), on the CPU: log P_lm of each word next
    state: State  # (L, B, H) each part, after the completed words: the batch it was stepped in
    column: int  # which of its B sequences
    word: str  # the word being spelled, not yet scored


class WordLMScorer:
    """A word language model (tokenizer.kind "word") scoring each word once a space or the end of
    the transcript completes it: log P(word | the words before, from a line start); words out of
    its vocabulary get log P(<unk>). Transcripts are lower case: a word is looked up without case,
    as the commonest of the vocabulary's spellings of it ("i" reads as "I")."""

    def __init__(self, model: RNNLanguageModel, tokenizer: Tokenizer) -> None:
        if tokenizer.kind != "word":
            raise RnnkitError(f"WordLMScorer needs a word language model, got a {tokenizer.kind} one")
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.ids: dict[str, int] = {}
        for i in range(tokenizer.vocab_size):  # ids run from the commonest token down
            self.ids.setdefault(tokenizer.token(i).lower(), i)

    def _id(self, word: str) -> int:
        return self.ids.get(word.lower(), self.tokenizer.unk_id)

    def start(self) -> _WordContext:
        log_probs, state = read_prompts(self.model, self.tokenizer, [""])  # after the line end
        return _WordContext(log_probs[0].cpu(), state, 0, "")

    def _log_prob(self, context: _WordContext) -> float:
        return float(context.log_probs[self._id(context.word)]) if context.word else 0.0

    def score(self, context: _WordContext, char: str) -> float:
        return self._log_prob(context) if char == " " else 0.0

    @torch.no_grad()
    def advance(self, contexts: Sequence[_WordContext], chars: Sequence[str]) -> list[_WordContext]:
        advanced = [c if char == " " else c._replace(word=c.word + char) for c, char in zip(contexts, chars)]
        completed = [i for i, (c, char) in enumerate(zip(contexts, chars)) if char == " " and c.word]
        if completed:
            parents = [contexts[i] for i in completed]
            tokens = torch.tensor([self._id(c.word) for c in parents], device=self.device)  # (n,)
            state = _gather(self.model, [c.state for c in parents], [c.column for c in parents])  # (L, n, H)
            log_probs, state = self.model.step(tokens, state)  # (n, V)
            for column, (i, row) in enumerate(zip(completed, log_probs.cpu())):
                advanced[i] = _WordContext(row, state, column, "")
        return advanced

    def finish(self, context: _WordContext) -> float:
        return self._log_prob(context)


def lm_scorer(model: RNNLanguageModel, tokenizer: Tokenizer) -> LanguageModelScorer:
    """The scorer for a language model, as `load_model(dir, kind="lm")` returns it."""
    if tokenizer.kind == "char":
        return CharLMScorer(model, tokenizer)
    if tokenizer.kind == "word":
        return WordLMScorer(model, tokenizer)
    raise RnnkitError(f"a {tokenizer.kind} language model cannot score transcripts: use a char or word language model")
