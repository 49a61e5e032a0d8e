"""`rnnkit train` with no model flags: the rule of `rnnkit.apps.lm.auto` fits the model to the corpus."""

import json

import pytest

from rnnkit.apps.lm import auto
from rnnkit.cli import main
from rnnkit.training.loop import native_cpu_bf16

from helpers import animal_corpus


def fake_speed(config, batch_size, bptt, optimizer, device, bf16=False):
    train = (2 if bf16 else 1) * 1e9 / config.hidden_size**2  # tokens/s: twice as wide, four times slower
    return auto.Speed(train, 3 * train)


@pytest.mark.parametrize("tokens, minutes, hidden, epochs", [
    (50_000, 5, 300, 63),  # a small text: many passes
    (1_000_000, 30, 300, 19),
    (10_000_000, 5, 128, 1),  # too large for the budget: the narrowest, one (partial) epoch
])
def test_the_rule_takes_the_widest_model_that_gets_its_passes(tokens, minutes, hidden, epochs):
    chosen = auto.plan(tokens, "word", 10_000, minutes, speed=fake_speed)
    assert chosen.model["hidden_size"] == hidden and chosen.train["epochs"] == epochs
    assert chosen.model["tie_weights"] and chosen.train["optimizer"] == "sgd"
    assert chosen.train["schedule"] == "cosine" and chosen.train["max_minutes"] == minutes
    wider = [h for h in auto.LADDER["word"] if h > hidden]
    if wider:  # the next width would not get the passes wanted
        assert fake_speed(type("C", (), {"hidden_size": wider[0]}), 0, 0, 0, 0).train * 60 * minutes \
            * (1 - auto.MARGIN) / tokens < auto.target_passes(tokens)
    assert f"2x{hidden} LSTM" in chosen.summary


def test_smaller_texts_get_more_passes_and_more_regularisation():
    small = auto.plan(50_000, "word", 10_000, 5, speed=lambda *a: auto.Speed(9_000, 27_000))
    large = auto.plan(2_000_000, "word", 10_000, 5, speed=lambda *a: auto.Speed(9_000, 27_000))
    assert small.train["epochs"] > large.train["epochs"] and small.model["dropout"] > large.model["dropout"]
    assert 0 < large.model["dropout"] <= small.model["dropout"] <= 0.5


def test_words_get_awd_regularisers_that_grow_with_width_and_passes():
    chosen = auto.plan(1_000_000, "word", 10_000, 30, speed=fake_speed)
    s = chosen.model["dropout"]
    assert s == auto.strength("word", 300, 19) == 0.31  # 0.07 sqrt(19 * 400 / 400)
    assert chosen.model["variational"] and chosen.model["dropout_input"] == s
    assert chosen.model["weight_drop"] == round(0.75 * s, 3)
    assert chosen.model["dropout_embedding"] == round(s / 4, 3)
    assert "AWD regularisers at 0.31" in chosen.summary
    assert auto.strength("word", 200, 6) == auto.strength("word", 400, 6) < auto.strength("word", 800, 6) \
        < auto.strength("word", 800, 12)
    assert auto.strength("word", 400, 13) == 0.25  # all of PTB in 30 minutes: test 88.8 (docs/benchmarks.md)
    assert auto.strength("word", 1500, 40) == 0.5  # at most 0.5


def test_the_evaluation_after_every_epoch_is_paid_for_at_its_measured_speed():
    """A small text with a large validation text: 24 evaluations of 74k tokens cost a third of the
    budget, which a rule counting training tokens alone spent on epochs the cosine never finished."""
    alone = auto.plan(47_000, "word", 10_000, 3, speed=lambda *a: auto.Speed(7_000, 14_000))
    evaluated = auto.plan(47_000, "word", 10_000, 3, valid_tokens=74_000, speed=lambda *a: auto.Speed(7_000, 14_000))
    assert evaluated.train["epochs"] < alone.train["epochs"]
    seconds = evaluated.train["epochs"] * (47_000 / 7_000 + 74_000 / 14_000)
    assert seconds <= 60 * 3 * (1 - auto.MARGIN)  # every epoch and its evaluation fit


def test_characters_train_with_adamw_in_long_windows_and_plain_dropout():
    chosen = auto.plan(5_000_000, "char", 50, 30, speed=lambda *a: auto.Speed(10_000, 30_000))
    assert chosen.train["optimizer"] == "adamw" and chosen.train["bptt"] == 128 and chosen.train["batch_size"] == 64
    assert not chosen.model["tie_weights"] and chosen.model["embedding_size"] == 128
    assert chosen.model["dropout"] == auto.strength("char", 256, chosen.train["epochs"]) > 0
    assert "weight_drop" not in chosen.model and "variational" not in chosen.model
    assert "5.0M char tokens, 30 minutes" in chosen.summary


def test_bf16_is_measured_and_trained_in_and_buys_a_wider_model():
    plain = auto.plan(1_000_000, "word", 10_000, 30, speed=fake_speed)
    fast = auto.plan(1_000_000, "word", 10_000, 30, bf16=True, speed=fake_speed)
    assert fast.model["hidden_size"] > plain.model["hidden_size"]
    assert fast.train["cpu_bf16"] is True and plain.train["cpu_bf16"] is False
    assert "CPU threads in bf16 ->" in fast.summary and "bf16" not in plain.summary


def test_measured_speeds_are_positive_and_leave_the_random_stream_alone():
    import torch

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    config = auto.LMConfig(**auto.model_fields("word", 16, 50, 0.1))
    assert min(auto.measure_speed(config, 4, 8, "sgd", steps=1)) > 0
    assert min(auto.measure_speed(config, 4, 8, "sgd", bf16=True, steps=1)) > 0
    assert torch.equal(torch.rand(3), expected)


def test_train_without_flags_says_the_rule_and_trains_within_the_budget(tmp_path, capsys):
    text = animal_corpus(tmp_path / "animals.txt", 300)
    assert main(["train", "--data", str(text), "--out", str(tmp_path / "m"), "--max-minutes", "0.05", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "word tokens, 0.05 minutes on" in err and "LSTM, tied" in err
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["train"]["schedule"] == "cosine" and saved["train"]["max_minutes"] == 0.05
    assert saved["model"]["tie_weights"] is True
    assert saved["train"]["cpu_bf16"] is native_cpu_bf16()  # bf16 where the CPU multiplies it in hardware
    assert main(["train", "--data", str(text), "--out", str(tmp_path / "f"), "--max-minutes", "0.05", "--no-cpu-bf16",
                 "--quiet"]) == 0
    assert "measuring this machine" in capsys.readouterr().err  # the rule still chooses, in float32
    assert json.loads((tmp_path / "f" / "config.json").read_text())["train"]["cpu_bf16"] is False


def test_any_model_flag_turns_the_rule_off(tmp_path, capsys):
    text = animal_corpus(tmp_path / "animals.txt", 100)
    assert main(["train", "--data", str(text), "--out", str(tmp_path / "m"), "--hidden", "8", "--epochs", "1",
                 "--quiet"]) == 0
    assert "measuring this machine" not in capsys.readouterr().err
    assert json.loads((tmp_path / "m" / "config.json").read_text())["train"]["schedule"] == "plateau"
