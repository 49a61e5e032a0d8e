"""CTC decoding: greedy against hand-made paths, prefix beam search against the most probable
labelling found by summing every path, and shallow fusion with tiny char and word language models."""

import itertools
import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnkit.apps.lm import LMConfig, RNNLanguageModel, next_log_probs
from rnnkit.apps.speech.ctc import (CharLMScorer, WordLMScorer, greedy_batch, greedy_decode, lm_scorer,
                                    prefix_beam_search)
from rnnkit.data import train_tokenizer_from_text
from rnnkit.errors import ParameterError, RnnkitError

ALPHABET = "_ abcdefghijklmnopqrstuvwxyz'"  # as speech/data.py has it: index 0 the blank, 1 the space


def frames(path: str, alphabet: str = ALPHABET, doubts: dict[int, dict[str, float]] | None = None) -> torch.Tensor:
    """Log-probabilities (T, C) of frames each sure of one symbol of `path` (0.9, the rest spread
    evenly), except frames t in `doubts`, whose symbols have the probabilities doubts[t] gives."""
    rows = [doubts[t] if doubts and t in doubts else {symbol: 0.9} for t, symbol in enumerate(path)]
    probs = torch.empty(len(path), len(alphabet), dtype=torch.float64)
    for t, given_probs in enumerate(rows):
        probs[t] = (1 - sum(given_probs.values())) / (len(alphabet) - len(given_probs))
        for symbol, p in given_probs.items():
            probs[t, alphabet.index(symbol)] = p
    return probs.log()


def spelled(text: str) -> str:
    """A path that reads as `text`: every character, then a blank."""
    return "".join(c + "_" for c in text)


def text(labels: list[int], alphabet: str = ALPHABET) -> str:
    return "".join(alphabet[i] for i in labels)


def brute_force(log_probs: torch.Tensor) -> dict[tuple[int, ...], float]:
    """The probability of every labelling: the sum over all C^T paths of those reading as it."""
    T, C = log_probs.shape
    p = log_probs.exp().tolist()
    found: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(C), repeat=T):
        labelling = tuple(s for s, _ in itertools.groupby(path) if s != 0)
        found[labelling] = found.get(labelling, 0.0) + math.prod(p[t][s] for t, s in enumerate(path))
    return found


def test_greedy_merges_repeats_then_drops_blanks():
    assert text(greedy_decode(frames("aa_a_bb"))) == "aab"
    assert text(greedy_decode(frames("__h_ee_l_ll_o o__"))) == "hello o"
    assert greedy_decode(frames("___")) == []
    assert greedy_decode(torch.zeros(0, len(ALPHABET))) == []


def test_greedy_batch_decodes_each_sequence_to_its_length():
    paths = ["aa_a_bb", "__c_cc", "d"]
    lengths = [7, 5, 1]  # the second cut inside its last run; what follows each length is padding
    padded = [path + "x" * (7 - len(path)) for path in paths]
    log_probs = torch.stack([frames(p) for p in padded], dim=1)  # (T, B, C)
    expected = [greedy_decode(frames(p[:n])) for p, n in zip(padded, lengths)]
    assert greedy_batch(log_probs, lengths) == expected
    assert [text(labels) for labels in expected] == ["aab", "cc", "d"]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), T=st.integers(1, 60))
def test_beam_1_without_lm_is_greedy_on_peaked_frames(seed, T):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, len(ALPHABET), generator=g)  # each frame sure of one symbol, as a trained model is
    best = torch.where(torch.rand(T, generator=g) < 0.5, 0, torch.randint(1, len(ALPHABET), (T,), generator=g))
    logits[torch.arange(T), best] += 8
    log_probs = logits.log_softmax(-1)
    assert prefix_beam_search(log_probs, ALPHABET, beam=1) == greedy_decode(log_probs)
    assert prefix_beam_search(log_probs, ALPHABET, beam=1, lm=None, lm_weight=1.0) == greedy_decode(log_probs)


def test_beam_1_merges_paths_where_greedy_follows_one():
    """On uncertain frames a beam of one is not greedy: "a" then (b .4, blank .35, a .25) is "ab"
    greedily, but "a" has .35 + .25 = .6 (paths "a_" and "aa")."""
    log_probs = torch.tensor([[0.0, 1.0, 0.0], [0.35, 0.25, 0.4]]).log()
    assert text(greedy_decode(log_probs), "_ab") == "ab"
    assert text(prefix_beam_search(log_probs, "_ab", beam=1), "_ab") == "a"
    assert max(brute_force(log_probs).items(), key=lambda item: item[1])[0] == (1,)


def test_prefix_beam_search_finds_the_labelling_greedy_misses():
    """Blank leads every frame, so greedy hears nothing; yet "a" takes most of the probability."""
    log_probs = torch.tensor([[0.4, 0.35, 0.25]] * 4).log()
    probability = brute_force(log_probs)
    best = max(probability, key=probability.get)
    assert greedy_decode(log_probs) == [] and probability[()] < probability[best]
    assert tuple(prefix_beam_search(log_probs, "_ab", beam=16)) == best == (1,)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), T=st.integers(4, 5), scale=st.floats(0.3, 3.0))
def test_a_wide_beam_finds_the_most_probable_labelling(seed, T, scale):
    g = torch.Generator().manual_seed(seed)
    log_probs = (torch.randn(T, 3, generator=g, dtype=torch.float64) * scale).log_softmax(-1)
    probability = brute_force(log_probs)  # at most 31 labellings of T <= 5 frames
    found = tuple(prefix_beam_search(log_probs, "_ab", beam=32, prune=math.inf))
    assert probability[found] == pytest.approx(max(probability.values()), rel=1e-9)


def test_bad_arguments_name_the_parameter():
    with pytest.raises(ParameterError, match="log_probs"):
        prefix_beam_search(torch.zeros(3, 5), ALPHABET)
    with pytest.raises(ParameterError, match="beam"):
        prefix_beam_search(frames("a"), ALPHABET, beam=0)
    with pytest.raises(ParameterError, match="prune"):
        prefix_beam_search(frames("a"), ALPHABET, prune=0.0)


# ------------------------------------------------------------------- shallow fusion

WHO = ["i", "she", "he", "we", "they", "you"]


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    forms = ["{} turned on the television", "{} sat on the sofa", "the television is on and {} sat on the sofa"]
    return [rng.choice(forms).format(rng.choice(WHO)) for _ in range(n)]


def train_lm(kind: str, rows: int, lines_per_row: int, steps: int):
    """A 1-layer LSTM language model of 64 units, trained on rows of sentences that each begin
    with a line end read from the zero state, where `read_prompts` reads prompts from."""
    lines = sentences(rows * lines_per_row)
    tokenizer = train_tokenizer_from_text(kind, ["\n".join(lines) + "\n"])
    encoded = [tokenizer.encode_prompt("\n".join(lines[r * lines_per_row : (r + 1) * lines_per_row]) + "\n")
               for r in range(rows)]
    length = min(len(e) for e in encoded)
    ids = torch.tensor([e[:length] for e in encoded]).T  # (T, B)
    torch.manual_seed(0)
    model = RNNLanguageModel(LMConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_layers=1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a module fixture runs before conftest's one_thread
    try:
        for _ in range(steps):
            loss, _ = model.loss(ids[:-1], ids[1:])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def char_lm():
    return train_lm("char", rows=16, lines_per_row=3, steps=150)


@pytest.fixture(scope="module")
def word_lm():
    return train_lm("word", rows=16, lines_per_row=4, steps=60)


def test_char_lm_contexts_step_in_one_batch_as_prompts_read_alone(char_lm):
    """Contexts from different batches, gathered in any order, read as their prompts do."""
    model, tokenizer = char_lm
    scorer = lm_scorer(model, tokenizer)
    assert isinstance(scorer, CharLMScorer)
    start = scorer.start()
    s, t = scorer.advance([start, start], ["s", "t"])
    [sh] = scorer.advance([s], ["h"])
    th, shy = scorer.advance([t, sh], ["h", "y"])
    she, the, sho = scorer.advance([sh, th, sh], ["e", "e", "o"])  # from two batches, interleaved
    expected = next_log_probs(model, tokenizer, ["she", "the", "sho", "shy", ""])
    for context, row in zip([she, the, sho, shy, start], expected):
        assert context.log_probs == pytest.approx(row.tolist(), abs=1e-5)
    assert scorer.score(the, " ") == pytest.approx(float(expected[1, tokenizer.id(" ")]), abs=1e-5)
    assert scorer.score(the, "q") == pytest.approx(float(expected[1, tokenizer.unk_id]), abs=1e-5)  # not in its text
    assert scorer.finish(the) == 0.0


def test_char_lm_fusion_spells_the_word_the_lm_expects(char_lm):
    """The acoustics lean to "talevision" (a .5, e .4); the char LM, sure of "television" after
    "turned on the ", turns the search to it."""
    heard = "she turned on the television"
    log_probs = frames(spelled(heard), doubts={38: {"a": 0.5, "e": 0.4}})  # frame 38: the "e" after "t"
    misspelled = "she turned on the talevision"
    assert text(greedy_decode(log_probs)) == misspelled
    assert text(prefix_beam_search(log_probs, ALPHABET, beam=16)) == misspelled
    scorer = lm_scorer(*char_lm)
    assert text(prefix_beam_search(log_probs, ALPHABET, beam=16, lm=scorer, lm_weight=0.5)) == heard
    assert text(prefix_beam_search(log_probs, ALPHABET, beam=16, lm=scorer, lm_weight=0.0)) == misspelled


def read(scorer, context, chars: str):
    """The context after appending each character of `chars`, one advance at a time."""
    for char in chars:
        [context] = scorer.advance([context], [char])
    return context


def test_a_word_lm_scores_each_word_once_it_is_complete(word_lm):
    model, tokenizer = word_lm
    scorer = lm_scorer(model, tokenizer)
    assert isinstance(scorer, WordLMScorer)
    after_on, after_the = next_log_probs(model, tokenizer, ["she turned on", "she turned on the"])
    spelling = read(scorer, scorer.start(), "she turned on  the")  # a doubled space completes no word
    assert spelling.word == "the"
    assert scorer.score(spelling, "y") == 0.0  # inside a word: nothing yet
    assert scorer.score(spelling, " ") == pytest.approx(float(after_on[tokenizer.id("the")]), abs=1e-5)
    spaced = read(scorer, spelling, " ")
    assert spaced.word == "" and scorer.score(spaced, " ") == 0.0
    assert spaced.log_probs.tolist() == pytest.approx(after_the.tolist(), abs=1e-5)
    # the end of the transcript completes the last word; one the model does not know is <unk>
    assert scorer.finish(read(scorer, spaced, "television")) == pytest.approx(
        float(after_the[tokenizer.id("television")]), abs=1e-5)
    assert scorer.finish(read(scorer, spaced, "talevision")) == pytest.approx(
        float(after_the[tokenizer.unk_id]), abs=1e-5)
    assert scorer.finish(spaced) == 0.0


@pytest.mark.parametrize("heard", ["she turned on the television",  # the last word: scored at the end
                                   "the television is on and we sat on the sofa"])  # scored at its space
def test_word_lm_fusion_corrects_a_word_it_does_not_know(word_lm, heard):
    t = 2 * heard.index("television") + 2  # the frame of its first "e"
    log_probs = frames(spelled(heard), doubts={t: {"a": 0.5, "e": 0.4}})
    misspelled = heard.replace("television", "talevision")
    assert text(prefix_beam_search(log_probs, ALPHABET, beam=16)) == misspelled
    scorer = lm_scorer(*word_lm)
    assert text(prefix_beam_search(log_probs, ALPHABET, beam=16, lm=scorer, lm_weight=0.5)) == heard


def test_the_word_bonus_favours_more_words():
    log_probs = frames("ab_cd", doubts={2: {"_": 0.5, " ": 0.4}})  # a space, or a pause inside a word?
    assert text(prefix_beam_search(log_probs, ALPHABET)) == "abcd"
    assert text(prefix_beam_search(log_probs, ALPHABET, word_bonus=0.5)) == "ab cd"


def test_only_char_and_word_models_score_transcripts(char_lm):
    model, _ = char_lm
    bpe = train_tokenizer_from_text("bpe", ["she turned on the television\n"])
    with pytest.raises(RnnkitError, match="use a char or word language model"):
        lm_scorer(model, bpe)
