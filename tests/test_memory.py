"""Memory over distance, attribution, and the `memory` and `demo` commands."""

import json

import pytest
import torch

from rnnkit import LMConfig, RNNLanguageModel
from rnnkit.demos.household.memory import MemoryConfig, WindowLM, make_data, measure
from rnnkit.diagnostics import attribute
from rnnkit.diagnostics.attribution import _integrated_gradients
from rnnkit.errors import RnnkitError
from rnnkit.demos.household import demo
from rnnkit.demos.household.memory import blank_correct, make_model
from rnnkit.demos.household import corpus as household
from rnnkit.apps.lm import LMTrainConfig

from helpers import tiny_household_lm


def test_window_model_sees_exactly_the_last_n_tokens():
    torch.manual_seed(0)
    model = WindowLM(vocab_size=20, window=3, embedding_size=4, hidden_size=8, pad=1).eval()
    ids = torch.randint(2, 20, (10, 2))
    logits, _ = model(ids)
    changed = ids.clone()
    changed[4] = (changed[4] + 1 - 2) % 18 + 2  # another token at t = 4
    moved = (model(changed)[0] - logits).abs().amax(dim=(1, 2))  # (T,)
    assert torch.all(moved[:4] == 0) and torch.all(moved[4:7] > 0) and torch.all(moved[7:] == 0)
    # before the start it reads the pad token
    padded, _ = model(torch.cat([torch.ones(2, 2, dtype=torch.long), ids]))
    torch.testing.assert_close(padded[2:], logits)


def test_window_model_rejects_an_empty_window():
    with pytest.raises(ValueError, match="at least 1 token"):
        WindowLM(10, 0, 4, 8, pad=1)


def test_data_prompts_end_before_their_device_and_buckets_cover_the_distances():
    config = MemoryConfig(max_distance=12, buckets=(0, 5, 10), train_sentences=50, test_sentences=40)
    data = make_data(config)
    tok = data.tokenizer
    for prompt, length, target in zip(data.prompts, data.prompt_lengths, data.targets):
        words = tok.decode(prompt[1:length].tolist()).split()
        assert words[-3:] == ["turned", "on", "the"] or words[-3:] == ["switched", "on", "the"]
        assert tok.token(int(target)) in set(household.DEVICE_WORDS)
    assert config.bucket_labels() == ["4", "5-9", "10-12"]
    assert data.distances.min() >= household.MIN_DISTANCE and data.distances.max() <= 12
    assert data.chance == pytest.approx(1 / 12)


@pytest.mark.parametrize("kwargs, message", [
    ({"buckets": (5, 10)}, "the first at most 4"),
    ({"buckets": (4, 4)}, "increasing"),
    ({"buckets": (4, 50)}, "at most max_distance"),
    ({"max_distance": 3}, "max_distance must be an integer >= 4"),
    ({"window": 0}, "window must be an integer >= 1"),
])
def test_config_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MemoryConfig(**kwargs)


def test_an_untrained_model_is_near_chance_and_blank_correct_scores_the_last_prompt_position():
    config = MemoryConfig(max_distance=10, train_sentences=100, test_sentences=600, steps=0, buckets=(4,))
    data = make_data(config)
    torch.manual_seed(0)
    model = make_model("lstm", data.tokenizer.vocab_size, config, pad=data.tokenizer.eos_id)
    correct = blank_correct(model, data, batch_size=64)
    with torch.no_grad():  # one prompt at a time, unpadded, gives the same answers
        model.eval()
        for i in range(0, 600, 97):
            logits, _ = model(data.prompts[i, : data.prompt_lengths[i]][:, None])
            assert bool(logits[-1, 0].argmax() == data.targets[i]) == bool(correct[i])
    assert float(correct.float().mean()) < 0.3


@pytest.mark.slow
def test_lstm_learns_the_device_from_the_cue_and_the_window_model_only_within_its_window():
    config = MemoryConfig(max_distance=8, buckets=(4, 5), train_sentences=1500, test_sentences=400,
                          steps=800, hidden_size=64, lr=1e-2)
    data = make_data(config)
    lstm = measure("lstm", data, config)
    window = measure("window", data, config)
    assert lstm.accuracy[0] > 0.8 and lstm.accuracy[1] > 0.8, lstm.accuracy  # chance: 1/12
    # at distance 4 the window of 5 holds the cue's last word ("controller" is shared by two objects)
    assert window.accuracy[0] > 0.6 and window.accuracy[1] < 0.25, window.accuracy
    assert lstm.counts == window.counts and sum(lstm.counts) == 400
    assert lstm.losses[-1] < lstm.losses[0]


def test_occlusion_and_gradient_x_input_follow_their_definitions():
    torch.manual_seed(0)
    tok = make_data(MemoryConfig(train_sentences=30, test_sentences=1)).tokenizer
    model = RNNLanguageModel(LMConfig(tok.vocab_size, hidden_size=16, num_layers=2)).double().eval()
    prompt = "I took the tea bag on the shelf and turned on the"
    devices = list(household.DEVICE_WORDS)
    a = attribute(model, tok, prompt, "kettle", devices)
    words = prompt.split()
    assert a.tokens == words

    def log_odds(text, inputs=None):
        ids = torch.tensor([tok.eos_id, *tok.encode(text, add_eos=False)])[:, None]
        x = model.embed(ids) if inputs is None else inputs
        logits, _ = model.forward_embedded(x, model.start_state(1))
        cands = torch.tensor([tok.id(d) for d in devices])
        p = logits[-1, 0, cands].softmax(-1)[devices.index("kettle")]
        return torch.log(p / (1 - p))  # the log-odds

    with torch.no_grad():
        assert a.prob == pytest.approx(float(torch.sigmoid(log_odds(prompt))), rel=1e-9)
        for i in range(len(words)):  # the expectation over the 10 likeliest other words at i
            ids = torch.tensor([tok.eos_id, *tok.encode(" ".join(words[:i]), add_eos=False)])[:, None]
            p = model(ids, model.start_state(1))[0][-1, 0].softmax(-1)
            p[tok.id(words[i])] = 0
            q, others = p.topk(10)
            swapped = [log_odds(" ".join([*words[:i], tok.token(int(w)), *words[i + 1 :]])) for w in others]
            expected = float((q / q.sum() * torch.stack(swapped)).sum())
            assert a.occlusion[i] == pytest.approx(float(log_odds(prompt)) - expected, abs=1e-6)
    ids = torch.tensor([tok.eos_id, *tok.encode(prompt, add_eos=False)])[:, None]
    inputs = model.embed(ids).detach().requires_grad_()
    (grad,) = torch.autograd.grad(log_odds(prompt, inputs), inputs)
    expected = (grad * inputs).sum(-1)[1:, 0]
    torch.testing.assert_close(torch.tensor(a.gradient_x_input, dtype=torch.float64), expected.detach())


def test_integrated_gradients_are_the_path_integral_and_add_up_to_the_gain():
    torch.manual_seed(0)
    tok = make_data(MemoryConfig(train_sentences=30, test_sentences=1)).tokenizer
    model = RNNLanguageModel(LMConfig(tok.vocab_size, hidden_size=16, num_layers=2)).double().eval()
    prompt, devices = "I took the tea bag on the shelf and turned on the", list(household.DEVICE_WORDS)
    a = attribute(model, tok, prompt, "kettle", devices, baselines=4, steps=200, seed=3)
    assert a == attribute(model, tok, prompt, "kettle", devices, baselines=4, steps=200, seed=3)  # seeded
    assert abs(a.ig_delta) < 1e-6 and len(a.integrated_gradients) == len(prompt.split())
    ids = torch.tensor(tok.encode_prompt(prompt))[:, None]
    x = model.embed(ids).detach()  # (T, 1, E)
    cands = torch.tensor([tok.id(d) for d in devices])
    target = devices.index("kettle")

    def log_odds(inputs):  # inputs (T, N, E) -> (N,)
        logits, _ = model.forward_embedded(inputs, model.start_state(inputs.shape[1]), last_only=True)
        logits = logits[:, cands]
        others = logits.clone()
        others[:, target] = -torch.inf
        return logits[:, target] - others.logsumexp(-1)

    n = 400
    alphas = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    # one reference, every word <unk>: the library's integral against the midpoint rule by hand
    reference = ids.T.clone()
    reference[:, 1:] = tok.unk_id
    scores, delta = _integrated_gradients(model, ids, reference, target, cands, steps=200)
    r = model.embed(reference.T).detach()  # (T, 1, E)
    path = (r + alphas[None, :, None] * (x - r)).requires_grad_()  # (T, n, E)
    (grad,) = torch.autograd.grad(log_odds(path).sum(), path)
    expected = ((x - r)[:, 0] * grad.mean(1)).sum(-1)[1:]  # (T - 1,)
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-4)
    assert abs(delta) < 1e-6


def test_attribution_rejects_unknown_targets_and_empty_prompts():
    tok = make_data(MemoryConfig(train_sentences=30, test_sentences=1)).tokenizer
    model = RNNLanguageModel(LMConfig(tok.vocab_size, hidden_size=8, num_layers=1))
    with pytest.raises(ValueError, match="training mode"):  # using a model never switches its mode
        attribute(model, tok, "I took the", "kettle")
    model.eval()
    with pytest.raises(RnnkitError, match="not in the word vocabulary"):
        attribute(model, tok, "I took the", "spaceship")
    with pytest.raises(RnnkitError, match="not among the candidates"):
        attribute(model, tok, "I took the", "kettle", ["toaster", "oven"])
    with pytest.raises(RnnkitError, match="prompt is empty"):
        attribute(model, tok, "", "kettle")


@pytest.mark.slow
def test_attribution_ranks_the_cue_above_the_distractors_on_a_trained_model():
    model, tok = tiny_household_lm()
    devices = list(household.DEVICE_WORDS)
    checked = 0
    for sample in household.generate(40, max_distance=12, seed=7):
        cue = sample.cue.split()
        words = sample.prompt.split()
        start = words.index(cue[0], 2)
        last_and = len(words) - 1 - words[::-1].index("and")
        distractors = range(start + len(cue), last_and)  # place and clauses, before "and ... turned on the"
        if len(distractors) < 4:
            continue
        a = attribute(model, tok, sample.prompt, sample.target, devices)
        if a.prob < 0.5:
            continue
        for scores in (a.occlusion, a.integrated_gradients):
            cue_score = max(scores[start : start + len(cue)])
            assert cue_score > max(scores[i] for i in distractors), (sample.text, scores)
        checked += 1
    # (gradient x input is not held to this: on this model it ranked the cue first in 4 of 20 such
    # sentences, occlusion and integrated gradients in all 20)
    assert checked >= 15


def test_memory_command_writes_its_files_and_json(cli, tmp_path, capsys):
    argv = ["memory", "--steps", "5", "--train-sentences", "60", "--test-sentences", "50", "--hidden", "8",
            "--max-distance", "20", "--buckets", "4,10", "--out", str(tmp_path / "m"), "--json"]
    assert cli(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in report["results"]] == ["elman", "lstm", "gru", "window"]
    assert report["buckets"] == ["4-9", "10-20"] and len(report["results"][0]["accuracy"]) == 2
    for name in ("memory.json", "memory.csv", "memory.png"):
        assert (tmp_path / "m" / name).stat().st_size > 0
    assert cli(argv[:-1] + ["--models", "lstm,window"]) == 0
    out = capsys.readouterr().out
    assert "window n=5" in out and "elman" not in out


@pytest.mark.parametrize("argv, message", [
    (["--models", "lstm,transformer"], "unknown model 'transformer' in --models"),
    (["--buckets", "4,x"], "--buckets must be comma-separated integers"),
    (["--buckets", "6,10"], "the first at most 4"),
    (["--window", "0"], "--window must be an integer >= 1, got 0"),
])
def test_memory_command_bad_settings_fail_in_one_line(cli, tmp_path, capsys, argv, message):
    assert cli(["memory", "--out", str(tmp_path / "m"), *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.fixture
def tiny_demo(monkeypatch):
    """The demo at a size that runs in seconds."""
    monkeypatch.setattr(demo, "MODEL", {"cell": "lstm", "hidden_size": 16, "num_layers": 1})
    monkeypatch.setattr(demo, "TRAINING", LMTrainConfig(optimizer="adamw", lr=3e-3, epochs=1, checkpoint_every=None))
    monkeypatch.setattr(demo, "MEMORY", MemoryConfig(train_sentences=60, test_sentences=50, steps=5, hidden_size=8))
    monkeypatch.setattr(demo, "SENTENCES", 600)


@pytest.mark.slow
def test_demo_runs_caches_and_retrains(cli, tmp_path, capsys, tiny_demo):
    out = tmp_path / "demo"
    assert cli(["demo", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "after the whole sentence" in text and 'after "turned on the" alone' in text
    assert "Memory over distance" in text and "window n=5" in text
    for name in ("attribution.png", "demo.json", "memory/memory.png", "model/model.safetensors", "model/results.json"):
        assert (out / name).stat().st_size > 0

    weights = (out / "model" / "model.safetensors").stat().st_mtime_ns
    assert cli(["demo", "--out", str(out), "--json"]) == 0  # cached: nothing trained again
    report = json.loads(capsys.readouterr().out)
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns == weights
    assert len(report["top5"]["sentence"]) == 5 and len(report["top5"]["alone"]) == 5
    assert all(0 <= p["prob"] <= 1 for p in report["top5"]["sentence"])
    a = report["attribution"]
    assert a["tokens"] == household.SEED_SENTENCE.split()[:-1]
    assert len(a["occlusion"]) == len(a["integrated_gradients"]) == len(a["gradient_x_input"]) == len(a["tokens"])
    assert set(report["memory"]["accuracy"]) == {"elman", "lstm", "gru", "window"}
    assert json.loads((out / "demo.json").read_text()) == report

    assert cli(["demo", "--out", str(out), "--retrain", "--json"]) == 0
    json.loads(capsys.readouterr().out)
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns != weights
    weights = (out / "model" / "model.safetensors").stat().st_mtime_ns
    assert not (out / "model.new").exists() and not (out / "model.old").exists()

    # a --retrain stopped between its renames leaves model.old alone: it is put back, not retrained;
    # a damaged memory.json is measured again
    (out / "model").rename(out / "model.old")
    (out / "memory" / "memory.json").write_text("{not json")
    assert cli(["demo", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == str(out / "model")
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns == weights
    json.loads((out / "memory" / "memory.json").read_text())


def test_demo_out_that_is_a_file_fails_in_one_line(cli, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert cli(["demo", "--out", str(tmp_path / "f")]) == 1
    err = capsys.readouterr().err
    assert "is not a folder" in err and err.count("\n") == 1
