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
