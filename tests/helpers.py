"""Small generated corpora with real structure, shared by the language-model tests."""

import random
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
