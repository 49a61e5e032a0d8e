r"""The household corpus: everyday scenes in which a word far back decides the last word.

The seed's sentence is the pattern, and one of the samples:

    I picked up the remote controller on the couch and turned on the television
                    \_______________/ \____________________________/ \________/
                           cue              distance: 7 words           device

Every sentence is "i <picked up> the <object> [<place>] [<distractors>] and [then] <turned on>
the <device>", where the object fixes the device (remote controller -> television, slice of bread
-> toaster, ...). Without the object, "turned on the" leaves every device equally likely: devices
are drawn in balanced blocks, and the verbs, places and distractors do not depend on the device.
Distractor clauses ("and the dog barked at the mail carrier", "while my sister unplugged the
toaster") mention other objects and devices, never the cue's object or its device, so guessing
the most recent device named fails.

`distance` counts the words strictly between the cue's last word and the blank. It is drawn
uniformly from MIN_DISTANCE to the maximum D, and place, filler and distractors are chosen to make
it exactly that, so that accuracy can be measured per distance bucket. MIN_DISTANCE is 4, the
words "and turned on the" that every sentence needs.

Scoring: every device's first word is unique (television, toaster, ..., lawn, washing), so the
first word after the final "the" identifies the device; `Sample.target` is that word.

Defaults: D = 24 keeps the longest sentence at 34 words with its <eos> (4 for "I picked up the",
3 for the longest object, 24, 2 for the longest device, 1), inside one truncated-BPTT window of
35 steps, the usual PTB setting, so no window cuts a dependency that starts at its own start.
20,000 sentences are about 430,000 tokens with <eos>, each of the 12 pairs about 1,700 times.
"""

from __future__ import annotations

import functools
import itertools
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ...errors import RnnkitError
from ...io import atomic_write

SEED_SENTENCE = "I picked up the remote controller on the couch and turned on the television"

MIN_DISTANCE = 4  # "and turned on the"
DEFAULT_MAX_DISTANCE = 24
DEFAULT_SENTENCES = 20_000


@dataclass(frozen=True)
class Pair:
    """An object and the device it is picked up for."""

    object: str
    device: str


PAIRS: tuple[Pair, ...] = (
    Pair("remote controller", "television"),
    Pair("slice of bread", "toaster"),
    Pair("drill bit", "drill"),
    Pair("grass catcher", "lawn mower"),
    Pair("tea bag", "kettle"),
    Pair("frozen pizza", "oven"),
    Pair("bag of popcorn", "microwave"),
    Pair("frozen berries", "blender"),
    Pair("wrinkled shirt", "iron"),
    Pair("dirty laundry", "washing machine"),
    Pair("vinyl record", "turntable"),
    Pair("game controller", "console"),
)
OBJECTS: tuple[str, ...] = tuple(p.object for p in PAIRS)
DEVICES: tuple[str, ...] = tuple(p.device for p in PAIRS)
DEVICE_OF: dict[str, str] = {p.object: p.device for p in PAIRS}
DEVICE_WORDS: tuple[str, ...] = tuple(d.split()[0] for d in DEVICES)  # unique: the word after the blank

PICK_UP_VERBS = ("picked up", "grabbed", "found", "took")
# where the object lay: any place with any object, so that the place says nothing of the device
# and the memory needed is the whole distance from the object
PLACES = ("on the couch", "on the counter", "on the shelf", "on the floor", "by the door", "in the basket",
          "under the chair", "on the kitchen table", "next to the sink", "on the top shelf")
ACTION_VERBS = ("turned on", "switched on")
# words between "and" and the action verb: they let the distance take every value
FILLERS = ("", "then", "after that")

# Distractor clauses: templates of fixed words and slots (upper case), each slot a list of phrases.
# DEVICE and OBJECT slots never take the sample's own device or object.
_SLOTS: dict[str, tuple[str, ...]] = {
    "CONJ": ("and", "while", "as", "when"),
    "PERSON": ("mom", "dad", "grandma", "my sister", "my brother", "my roommate", "my neighbor",
               "the plumber", "the mail carrier"),
    "ANIMAL": ("the dog", "our dog", "the puppy", "the old dog"),
    "ANIMAL_ACT": ("barked", "howled", "yawned", "fell asleep", "ran outside", "chased its tail",
                   "hid under the bed", "jumped onto the windowsill"),
    "ANIMAL_AT": ("barked at", "stared at", "growled at", "wagged its tail at"),
    "PERSON_ACT": ("laughed", "sneezed", "called", "came home", "left for work", "sang a song",
                   "read the newspaper", "knocked on the door", "talked on the phone",
                   "opened the window", "watered the plants"),
    "EVENT": ("it rained", "the phone rang", "the doorbell rang", "the baby cried", "the wind howled",
              "it started to snow", "the sun came out", "the lights flickered", "thunder rumbled outside"),
    "ROOM": ("upstairs", "downstairs", "outside", "in the kitchen", "in the hallway", "in the garage",
             "in the garden", "on the porch", "in the living room"),
    # "turned off" shares "turned" with the action, so that the verb alone does not mark the end
    "DEVICE_ACT": ("unplugged", "cleaned", "fixed", "moved", "borrowed", "turned off", "looked at",
                   "was using", "complained about"),
    "DEVICE_NOISE": ("beeped", "hummed", "rattled", "buzzed", "clicked", "made a strange noise"),
    "I_DEVICE_ACT": ("noticed", "dusted", "ignored", "walked past", "stepped around"),
    "OBJECT_ACT": ("dropped", "hid", "found", "put away", "threw out", "asked about", "was looking for"),
    "DEVICE": DEVICES,
    "OBJECT": OBJECTS,
}
_TEMPLATES: tuple[str, ...] = (
    "CONJ EVENT",
    "CONJ ANIMAL ANIMAL_ACT",
    "CONJ ANIMAL ANIMAL_AT PERSON",
    "CONJ PERSON PERSON_ACT",
    "CONJ PERSON PERSON_ACT ROOM",
    "CONJ the DEVICE DEVICE_NOISE",
    "CONJ PERSON DEVICE_ACT the DEVICE",
    "CONJ PERSON DEVICE_ACT the DEVICE ROOM",
    "CONJ PERSON said that the DEVICE was broken",
    "CONJ i I_DEVICE_ACT the DEVICE",
    "CONJ PERSON OBJECT_ACT the OBJECT",
    "CONJ PERSON OBJECT_ACT the OBJECT ROOM",
)

# templates naming a device or an object are drawn this many times as often as the others, so
# that most long sentences name a wrong device or object after the cue
_NAMING_WEIGHT = 3

# devices come in shuffled blocks holding each device this many times: the counts stay balanced
# in every prefix, while the next device stays unpredictable from the previous sentences
_BLOCK_REPEATS = 16


@dataclass(frozen=True)
class Sample:
    """One sentence, with what an evaluation needs: `prompt` is the text up to the blank (it ends
    with "the"), `cue` the object words, `device` the answer, `distance` the number of words
    strictly between the cue's last word and the blank."""

    text: str
    prompt: str
    cue: str
    device: str
    distance: int

    @property
    def target(self) -> str:
        """The word to predict after `prompt`: the device's first word, unique among devices."""
        return self.device.split()[0]


def iter_samples(max_distance: int = DEFAULT_MAX_DISTANCE, seed: int = 0) -> Iterator[Sample]:
    """Samples without end, the same for the same `max_distance` and `seed`; the first n are
    `generate(n, max_distance, seed)`, so a larger corpus extends a smaller one."""
    _check_max_distance(max_distance)
    return _samples(max_distance, random.Random(seed))


def _samples(max_distance: int, rng: random.Random) -> Iterator[Sample]:
    while True:
        block = [pair for pair in PAIRS for _ in range(_BLOCK_REPEATS)]
        rng.shuffle(block)
        for pair in block:
            yield _sample(rng, pair, rng.randint(MIN_DISTANCE, max_distance))


def generate(n: int, max_distance: int = DEFAULT_MAX_DISTANCE, seed: int = 0) -> list[Sample]:
    """`n` samples, deterministic from `seed`, with distances uniform in [MIN_DISTANCE, max_distance]."""
    if n < 0:
        raise RnnkitError(f"the number of sentences must be at least 0, got {n}")
    return list(itertools.islice(iter_samples(max_distance, seed), n))


def write_corpus(
    path: str | os.PathLike[str],
    n: int = DEFAULT_SENTENCES,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    seed: int = 0,
) -> Path:
    """Write `n` sentences, one a line, to `path` atomically (the old file stays whole until the
    new one is complete); returns the path."""
    if n < 1:
        raise RnnkitError(f"the number of sentences must be at least 1, got {n}")
    _check_max_distance(max_distance)
    path = Path(path)
    if path.is_dir():
        raise RnnkitError(f"output is a folder, expected a file name: {path}")
    with atomic_write(path, "w") as f:
        for sample in itertools.islice(iter_samples(max_distance, seed), n):
            f.write(sample.text + "\n")
    return path


def default_corpus(folder: str | os.PathLike[str], sentences: int = DEFAULT_SENTENCES) -> Path:
    """FOLDER/household.txt, written once: the corpus `rnnkit train` and the demo use when given none."""
    path = Path(folder) / "household.txt"
    if not path.exists():
        write_corpus(path, sentences)
    return path


def parse(sentence: str) -> Sample:
    """Recover cue, device and distance from a household sentence (the frame "i <verb> the
    <object> ... and [then] <turned on> the <device>"; the words between are not checked)."""
    words = sentence.split()
    verb = next((v for v in PICK_UP_VERBS if words[1 : 1 + len(v.split())] == v.split()), None)
    if words[:1] != ["I"] or verb is None:
        raise RnnkitError(f"not a household sentence (expected it to start 'I picked up the'): {sentence!r}")
    start = 2 + len(verb.split())  # first word of the object
    # the longest object that fits, should one object ever begin another
    cue = max((o for o in OBJECTS if words[start - 1 : start + len(o.split())] == ["the", *o.split()]),
              key=len, default=None)
    device = next((d for d in DEVICES if words[-len(d.split()) - 1 :] == ["the", *d.split()]), None)
    if cue is None or device is None:
        raise RnnkitError(f"not a household sentence (no known object after 'the', or no known device "
                          f"at the end): {sentence!r}")
    blank = len(words) - len(device.split())
    if not any(words[blank - 1 - len(a.split()) : blank - 1] == a.split() for a in ACTION_VERBS):
        raise RnnkitError(f"not a household sentence (expected 'turned on the' before the device): {sentence!r}")
    cue_end = start + len(cue.split())
    return Sample(" ".join(words), " ".join(words[:blank]), cue, device, blank - cue_end)


def _check_max_distance(max_distance: int) -> None:
    if max_distance < MIN_DISTANCE:
        raise RnnkitError(f"the maximum distance must be at least {MIN_DISTANCE} words "
                          f"(every sentence ends 'and turned on the'), got {max_distance}")


def _sample(rng: random.Random, pair: Pair, distance: int) -> Sample:
    """A sentence for `pair` whose cue and blank are exactly `distance` words apart."""
    rest = distance - MIN_DISTANCE
    # place after the object (none, or one of PLACES, weight 1 each) and filler (weights 4:1:1), among
    # the choices that leave the distractors a length they can take (0 or at least their minimum)
    shortest = min(_clause_table())
    choices, weights = [], []
    for place, filler in itertools.product(("", *PLACES), range(len(FILLERS))):
        left = rest - len(place.split()) - len(FILLERS[filler].split())
        if left == 0 or left >= shortest:
            choices.append((place, FILLERS[filler], left))
            weights.append(4 if filler == 0 else 1)
    place, filler, left = rng.choices(choices, weights)[0]

    words = ["I", *rng.choice(PICK_UP_VERBS).split(), "the", *pair.object.split()]
    cue_end = len(words)
    words += place.split()
    for length in _partition(rng, left, shortest):
        words += _clause(rng, length, pair)
    words += ["and", *filler.split(), *rng.choice(ACTION_VERBS).split(), "the"]
    blank = len(words)
    words += pair.device.split()
    return Sample(" ".join(words), " ".join(words[:blank]), pair.object, pair.device, blank - cue_end)


def _partition(rng: random.Random, total: int, shortest: int) -> list[int]:
    """Random clause lengths summing to `total` (0 or at least `shortest`)."""
    longest = max(_clause_table())
    lengths = []
    while total:
        fits = [n for n in range(shortest, min(longest, total) + 1) if total - n == 0 or total - n >= shortest]
        lengths.append(rng.choice(fits))
        total -= lengths[-1]
    return lengths


def _clause(rng: random.Random, length: int, pair: Pair) -> list[str]:
    """The words of a distractor clause of exactly `length` words that names neither `pair`'s
    object nor its device."""
    banned = {pair.object, pair.device}
    by_template = _clause_table()[length]
    templates = list(by_template)
    weights = [_NAMING_WEIGHT if {"DEVICE", "OBJECT"} & set(t.split()) else 1 for t in templates]
    while True:  # ends: every slot length has phrases besides the banned one
        template = rng.choices(templates, weights)[0]
        slot_lengths = rng.choice(by_template[template])
        words = []
        for token, n in zip(template.split(), slot_lengths):
            if token not in _SLOTS:
                words.append(token)
                continue
            options = [p for p in _SLOTS[token] if len(p.split()) == n and p not in banned]
            if not options:
                break
            words += rng.choice(options).split()
        else:
            return words


@functools.cache
def _clause_table() -> dict[int, dict[str, list[tuple[int, ...]]]]:
    """For each clause length, the templates that can have it, each with the word counts of its
    tokens that give it."""
    table: dict[int, dict[str, list[tuple[int, ...]]]] = {}
    for template in _TEMPLATES:
        options = [sorted({len(p.split()) for p in _SLOTS[t]}) if t in _SLOTS else [1] for t in template.split()]
        for counts in itertools.product(*options):
            table.setdefault(sum(counts), {}).setdefault(template, []).append(counts)
    lengths = sorted(table)
    assert lengths == list(range(lengths[0], lengths[-1] + 1)), "clause lengths must have no gaps"
    return table
