"""Decoding over the step protocol: beam search against exhaustive search, batched against one by
one, sampling and its filters, on a Markov chain whose every sequence's probability is known."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnkit import decoding
from rnnkit.apps.lm import LMConfig, RNNLanguageModel, read_prompts
from rnnkit.data import train_tokenizer_from_text
from rnnkit.decoding.beam import MAX_BEAM
from rnnkit.errors import ParameterError


class MarkovChain:
    """A StepModel whose state is the last token: log p(next | last) = table[last]."""

    def __init__(self, V: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(V, V, generator=g, dtype=torch.float64).mul(2).log_softmax(-1)  # (V, V)

    def start(self, first: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The log-probabilities and state after reading one token per context."""
        tokens = torch.tensor(first)
        return self.table[tokens], tokens

    def step(self, tokens, state):
        return self.table[tokens], tokens

    def reorder_state(self, state, index):
        return state.index_select(0, index)

    def log_prob(self, first: int, tokens: list[int]) -> float:
        return sum(float(self.table[a, b]) for a, b in zip([first, *tokens], tokens))


def test_a_beam_wide_enough_finds_the_most_probable_sequence():
    chain, length = MarkovChain(4), 4
    best = max(itertools.product(range(4), repeat=length), key=lambda s: chain.log_prob(2, list(s)))
    hyps = decoding.beam_search(chain, *chain.start([2]), length=length, beam=4 ** (length - 1))[0]
    assert hyps[0].tokens == list(best)
    assert hyps[0].score == pytest.approx(chain.log_prob(2, list(best)))
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)


def test_beam_of_one_is_greedy_decoding():
    chain = MarkovChain(6, seed=1)
    greedy = [int(t) for t in decoding.sample(chain, *chain.start([0]), length=7, temperature=0)]
    assert decoding.beam_search(chain, *chain.start([0]), length=7, beam=1)[0][0].tokens == greedy


def test_batched_beam_search_equals_one_context_at_a_time():
    chain = MarkovChain(7, seed=2)
    firsts = [0, 3, 5, 3]
    batched = decoding.beam_search(chain, *chain.start(firsts), length=5, beam=3, eos_id=6, length_penalty=0.7)
    for first, hyps in zip(firsts, batched):
        alone = decoding.beam_search(chain, *chain.start([first]), length=5, beam=3, eos_id=6, length_penalty=0.7)[0]
        assert [(h.tokens, h.score) for h in hyps] == [(h.tokens, pytest.approx(h.score)) for h in alone]


def test_an_end_token_finishes_hypotheses_ranked_by_normalised_score():
    chain, eos, length, alpha = MarkovChain(3, seed=3), 0, 4, 1.0
    # every continuation: ended by eos at some step, or running to the length
    candidates = [list(s[: s.index(eos) + 1]) if eos in s else list(s) for s in itertools.product(range(3), repeat=length)]
    candidates = [list(c) for c in {tuple(c) for c in candidates}]
    best = max(candidates, key=lambda c: chain.log_prob(1, c) / len(c) ** alpha)
    hyps = decoding.beam_search(chain, *chain.start([1]), length=length, beam=27, eos_id=eos, length_penalty=alpha)[0]
    assert hyps[0].tokens == best
    assert hyps[0].normalized == pytest.approx(chain.log_prob(1, best) / len(best) ** alpha)
    assert all(eos not in h.tokens[:-1] for h in hyps)  # nothing goes on past its end


class CountingModel:
    """A StepModel whose state is the position: tokens 0 (the end), 1 and 2; before position 4 the end
    is unlikely but not impossible, at position 4 it is near certain."""

    def step(self, tokens, state):
        position = state + 1
        return self.at(position), position

    def at(self, position):
        early = torch.tensor([-1.0, 3.0, -3.0], dtype=torch.float64).log_softmax(-1)
        late = torch.tensor([5.0, 0.0, 0.0], dtype=torch.float64).log_softmax(-1)
        return torch.stack([early if p < 4 else late for p in position.tolist()])

    def reorder_state(self, state, index):
        return state.index_select(0, index)


def test_early_unlikely_ends_do_not_stop_the_search_before_the_likely_long_one():
    model = CountingModel()
    start = torch.zeros(1, dtype=torch.long)
    for penalty in (0.0, 1.0):
        best = decoding.beam_search(model, model.at(start), start, length=20, beam=2, eos_id=0, length_penalty=penalty)[0][0]
        assert best.tokens == [1, 1, 1, 1, 0]
        assert best.score == pytest.approx(4 * float(model.at(start)[0, 1]) + float(model.at(start + 4)[0, 0]))


def test_a_beam_wider_than_every_continuation_holds_them_all_and_the_width_is_bounded():
    chain = MarkovChain(5)
    hyps = decoding.beam_search(chain, *chain.start([0]), length=2, beam=50)[0]
    every = sorted(itertools.product(range(5), repeat=2), key=lambda s: -chain.log_prob(0, list(s)))
    assert [h.tokens for h in hyps] == [list(s) for s in every]
    for beam in (0, MAX_BEAM + 1, 10**9):
        with pytest.raises(ParameterError, match="beam must be an integer from 1 to"):
            decoding.beam_search(chain, *chain.start([0]), length=3, beam=beam)


def test_sampling_follows_the_distribution_and_its_seed():
    chain = MarkovChain(4, seed=4)
    lp, state = chain.start([1] * 4000)
    first = next(decoding.sample(chain, lp, state, length=1, generator=torch.Generator().manual_seed(0)))
    frequencies = torch.bincount(first, minlength=4).double() / 4000
    torch.testing.assert_close(frequencies, chain.table[1].exp(), atol=0.03, rtol=0)

    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.stack(list(decoding.sample(chain, *chain.start([1, 2]), length=6, top_k=3, generator=g)))

    assert torch.equal(draw(5), draw(5))


def test_sampling_stops_once_every_sequence_has_ended():
    chain = MarkovChain(3, seed=5)
    steps = list(decoding.sample(chain, *chain.start([0, 1, 2]), length=500, eos_id=0,
                                 generator=torch.Generator().manual_seed(0)))
    assert len(steps) < 500 and bool((steps[-1] == 0).all())
    ended = torch.zeros(3, dtype=torch.bool)
    for tokens in steps:  # once ended, a sequence writes the end token again
        assert bool((tokens[ended] == 0).all())
        ended |= tokens == 0


def test_a_tiny_temperature_is_greedy_and_never_nan():
    chain = MarkovChain(6, seed=6)
    greedy = torch.stack(list(decoding.sample(chain, *chain.start([0, 4]), length=5, temperature=0)))
    for temperature in (1e-6, 1e-320):
        tiny = torch.stack(list(decoding.sample(chain, *chain.start([0, 4]), length=5, temperature=temperature)))
        assert torch.equal(tiny, greedy)


@pytest.mark.parametrize("kwargs,message", [
    ({"length": 0}, "length must be a positive integer"),
    ({"temperature": float("nan")}, "temperature must be a finite number >= 0"),
    ({"temperature": -1.0}, "temperature must be a finite number >= 0"),
    ({"top_k": 0}, "top_k must be a positive integer"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
])
def test_bad_sampling_settings_name_their_parameter(kwargs, message):
    chain = MarkovChain(3)
    with pytest.raises(ParameterError, match=message):
        next(decoding.sample(chain, *chain.start([0]), **{"length": 3, **kwargs}))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), top_k=st.integers(1, 12), top_p=st.floats(0.01, 1.0))
def test_filter_keeps_the_top_k_and_the_smallest_nucleus(seed, top_k, top_p):
    logits = torch.randn(3, 10, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    kept = torch.isfinite(decoding.filter_logits(logits, top_k=top_k, top_p=top_p))
    for row, keep in zip(logits, kept):
        order = row.argsort(descending=True)[:top_k]  # top-k first, then the nucleus of what is left
        p = row[order].softmax(-1)
        # the nucleus: the likeliest tokens up to and including the one that brings the mass to top_p
        nucleus = int((p.cumsum(0) - p < top_p).sum())
        expected = torch.zeros(10, dtype=torch.bool)
        expected[order[:nucleus]] = True
        assert torch.equal(keep, expected)


def test_language_model_prompts_read_as_a_padded_batch_decode_as_they_would_alone():
    torch.manual_seed(0)
    tokenizer = train_tokenizer_from_text("word", ["the cow says moo", "the owl at night says hoot ."])
    model = RNNLanguageModel(LMConfig(tokenizer.vocab_size, cell="gru", hidden_size=16, num_layers=2)).eval()
    prompts = ["the cow", "the owl at night says", "", "says"]
    batched = decoding.beam_search(model, *read_prompts(model, tokenizer, prompts), length=4, beam=3)
    for prompt, hyps in zip(prompts, batched):
        alone = decoding.beam_search(model, *read_prompts(model, tokenizer, [prompt]), length=4, beam=3)[0]
        assert [h.tokens for h in hyps] == [h.tokens for h in alone]
        assert [h.score for h in hyps] == pytest.approx([h.score for h in alone], abs=1e-5)


def test_draw_takes_each_token_with_its_probability_and_never_one_of_probability_zero():
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([decoding.sampling.draw(probs, generator) for _ in range(20000)])  # (20000, 2)
    share = torch.bincount(draws[:, 0], minlength=5) / len(draws)
    torch.testing.assert_close(share, probs[0], atol=0.015, rtol=0)  # 4.5 standard errors at most
    assert (draws[:, 1] == 4).all()
