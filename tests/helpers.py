"""Small generated corpora with real structure, and a run killed mid-training, shared by the tests."""

import json
import random
import signal
import subprocess
import time
from pathlib import Path

# each animal fixes its sound: "the cow says moo" is certain, the animal itself is not
ANIMALS = {"cow": "moo", "dog": "woof", "cat": "meow", "duck": "quack", "owl": "hoot", "sheep": "baa"}
PLACES = ["in the barn", "on the hill", "by the river", "at night", "in the morning"]


def animal_corpus(path: Path, lines: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(lines):
            animal = rng.choice(sorted(ANIMALS))
            f.write(f"the {animal} {rng.choice(PLACES)} says {ANIMALS[animal]} .\n")
    return path


def kill_once_saved(victim: subprocess.Popen, directory: Path, step: int, timeout: float = 300) -> int:
    """SIGKILL a training process once its trainer state of `step` or later is saved in `directory`;
    return the step of the state it left."""
    state = directory / "trainer_state" / "state.json"
    deadline = time.time() + timeout
    while time.time() < deadline and not (state.exists() and json.loads(state.read_text())["step"] >= step):
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    return json.loads(state.read_text())["step"]


def tiny_household_lm():
    """An LSTM language model (64 units) trained on short household sentences in about 5 s, and
    its tokenizer: it completes the seed's sentence with "television" (p about 0.8)."""
    import torch
    from rnnkit.demos.household.memory import MemoryConfig, make_data, make_model, train_model

    config = MemoryConfig(max_distance=12, train_sentences=1500, test_sentences=10, steps=1000, hidden_size=64,
                          lr=1e-2)
    data = make_data(config)
    torch.manual_seed(0)
    model = make_model("lstm", data.tokenizer.vocab_size, config, pad=data.tokenizer.eos_id)
    train_model(model, data, config)
    return model.eval(), data.tokenizer


def household_model_dir(directory: Path) -> Path:
    """`tiny_household_lm` saved as a model directory, as `rnnkit train` leaves one."""
    from rnnkit.apps.lm import LMTrainConfig
    from rnnkit.apps.lm.task import TOKENIZER
    from rnnkit.training.checkpoint import save_model

    model, tokenizer = tiny_household_lm()
    save_model(directory, model, {TOKENIZER: tokenizer}, LMTrainConfig(optimizer="adamw"))
    return directory


def object_outranks_distractors(words: list[str], scores: list[float]) -> bool:
    """In the seed's sentence, "remote controller" scores above every distractor word between it and
    "and turned on the" (the rule of test_memory's attribution test; the closing frame, which says a
    device comes next, may score higher still)."""
    start = words.index("remote")
    last_and = len(words) - 1 - words[::-1].index("and")
    return max(scores[start:start + 2]) > max(scores[start + 2:last_and])
