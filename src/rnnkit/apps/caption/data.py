"""Images with captions: generated scenes, strips of scanned digits, or the user's own folder.

A captioned set is a folder per split, each holding its images and a JSON-lines file:

    DIR/{train,valid,test}/captions.jsonl   {"image": "images/000123.png", "captions": ["...", ...], ...}
    DIR/{train,valid,test}/images/*.png

`scenes` draws 64 x 64 scenes of 1-3 shapes (colour, shape, size, where they stand) with 3-4
captions in varied wording each; each test scene holds an object whose size, colour and shape
together were never seen in training.
`digits` composes the 1,797 scans of handwritten digits that scikit-learn ships into strips of
2-5 digits, captioned in words; valid and test strips use only scans held out from training.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ...errors import RnnkitError
from ...io import atomic_write, read_jsonl

SPLITS = ("train", "valid", "test")
CAPTIONS = "captions.jsonl"
MAX_PIXELS = 4096 * 4096  # a larger image is refused (a decompression bomb, or not what a 64-pixel model reads)

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 230), "yellow": (230, 210, 40),
           "purple": (150, 60, 200)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 6, "large": 11}  # half the extent, in pixels
# size-colour-shape triples seen only in the test split: every word and word pair of their captions
# is seen in training ("small red", "red triangle"), the whole never
HELD_OUT = (("small", "red", "triangle"), ("large", "green", "circle"), ("small", "blue", "square"),
            ("large", "yellow", "square"), ("small", "purple", "circle"))
WORDS_OF_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class Example:
    image: Path
    captions: list[str]
    objects: list[dict[str, Any]] = field(default_factory=list)  # scenes: shape, colour, size, box [x0, y0, x1, y1]


# --------------------------------------------------------------------- reading


def read_image(path: Path | BinaryIO, size: tuple[int, int] | None = None) -> np.ndarray:
    """An image as uint8 RGB (H, W, 3), resized to size = (H, W) when given, from a file or an
    open binary stream (named by its `name`); RnnkitError naming it if it is missing, not an image,
    truncated or too large."""
    from PIL import Image, UnidentifiedImageError

    name = getattr(path, "name", path)
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                raise RnnkitError(f"{name} has {image.width} x {image.height} pixels, more than the "
                                  f"{MAX_PIXELS} this reads")
            image.load()
            rgb = image.convert("RGBA").convert("RGB") if image.mode in ("P", "LA", "RGBA") else image.convert("RGB")
            if size is not None and (rgb.height, rgb.width) != size:
                rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.array(rgb, dtype=np.uint8)  # a writable copy
    except FileNotFoundError:
        raise RnnkitError(f"image not found: {name}") from None
    except UnidentifiedImageError:
        raise RnnkitError(f"{name} is not an image Pillow can read (PNG, JPEG, ...)") from None
    except (OSError, SyntaxError) as error:  # Pillow's "image file is truncated", broken chunks
        raise RnnkitError(f"{name} is a damaged image ({error})") from None
    except Image.DecompressionBombError:
        raise RnnkitError(f"{name} is too large an image (Pillow refuses it as a decompression bomb)") from None


def read_captions(folder: str | Path) -> list[Example]:
    """The examples of one split: FOLDER/captions.jsonl, image paths relative to the folder.
    RnnkitError naming the file and line of a bad line or a missing image."""
    folder = Path(folder)
    path = folder / CAPTIONS if folder.is_dir() else folder
    folder = path.parent
    examples = []
    for n, record in read_jsonl(path, "captions file"):
        if not isinstance(record, dict) or not isinstance(record.get("image"), str):
            raise RnnkitError(f'{path}:{n}: expected {{"image": "...", "captions": ["...", ...]}}')
        captions = record.get("captions")
        if not isinstance(captions, list) or not captions or not all(isinstance(c, str) and c.strip() for c in captions):
            raise RnnkitError(f"{path}:{n}: \"captions\" must be a list of non-empty strings")
        image = folder / record["image"]
        if not image.is_file():
            raise RnnkitError(f"{path}:{n}: image not found: {image}")
        examples.append(Example(image, [" ".join(c.split()) for c in captions], record.get("objects", [])))
    if not examples:
        raise RnnkitError(f"{path} holds no captioned images")
    return examples


def load_splits(data: str | Path) -> dict[str, list[Example]]:
    """train/valid/test of a folder with one subfolder per split (valid and test optional: what
    is missing is carved off the training images, 5% each, by position)."""
    data = Path(data)
    if not (data / "train").is_dir():
        if (data / CAPTIONS).exists():  # one folder: carve the splits
            every = read_captions(data)
            return {"train": [e for i, e in enumerate(every) if i % 20 >= 2], "valid": every[0::20], "test": every[1::20]}
        raise RnnkitError(f"{data} has neither train/{CAPTIONS} nor {CAPTIONS}")
    splits = {name: read_captions(data / name) for name in SPLITS if (data / name / CAPTIONS).exists()}
    if "valid" not in splits:
        train = splits["train"]
        splits["train"], splits["valid"] = [e for i, e in enumerate(train) if i % 20], train[::20]
    splits.setdefault("test", [])
    return splits


def write_split(folder: Path, images: Sequence[np.ndarray], records: Sequence[dict[str, Any]]) -> None:
    """PNG files and captions.jsonl (written last, atomically: it names only images already there)."""
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (pixels, record) in enumerate(zip(images, records)):
        name = f"images/{i:06d}.png"
        with atomic_write(folder / name) as f:
            Image.fromarray(pixels).save(f, format="PNG")
        lines.append(json.dumps({"image": name, **record}) + "\n")
    with atomic_write(folder / CAPTIONS, "w") as f:
        f.writelines(lines)


# --------------------------------------------------------------------- scenes


def _draw(rng: random.Random, objects: list[dict[str, Any]]) -> np.ndarray:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 64), (30, 30, 30))
    draw = ImageDraw.Draw(image)
    for o in objects:
        x0, y0, x1, y1 = o["box"]
        colour = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in COLOURS[o["colour"]])
        if o["shape"] == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif o["shape"] == "square":
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)
    noise = np.random.default_rng(rng.getrandbits(32)).integers(-6, 7, (64, 64, 3))  # sensor noise
    return (np.asarray(image, dtype=np.int16) + noise).clip(0, 255).astype(np.uint8)


def _phrase(o: dict[str, Any]) -> str:
    return f"a {o['size']} {o['colour']} {o['shape']}"


def scene_captions(objects: list[dict[str, Any]], relation: str) -> list[str]:
    """3-4 ways to say what the scene shows; objects are listed left to right (or top to bottom)."""
    a = [_phrase(o) for o in objects]
    if len(a) == 1:
        return [a[0], f"there is {a[0]}", f"{a[0]} on its own", f"a single {a[0][2:]}"]
    if len(a) == 2 and relation == "horizontal":
        return [f"{a[0]} to the left of {a[1]}", f"{a[1]} to the right of {a[0]}", f"{a[0]} next to {a[1]}",
                f"{a[0]} and {a[1]} on its right"]
    if len(a) == 2:
        return [f"{a[0]} above {a[1]}", f"{a[1]} below {a[0]}", f"{a[0]} on top of {a[1]}"]
    return [f"{a[0]} , {a[1]} and {a[2]}", f"from left to right {a[0]} , {a[1]} and {a[2]}",
            f"{a[0]} to the left of {a[1]} and {a[2]}"]


def random_scene(rng: random.Random, held_out: bool, count: int | None = None, relation: str | None = None
                 ) -> tuple[np.ndarray, dict[str, Any]]:
    """One scene and its record; with `held_out`, at least one object is of a held-out
    size-colour-shape triple, otherwise none is. `count` objects (default: 1-3 at random), side by
    side ("horizontal") or one above the other ("vertical") as `relation` says (default: either)."""
    fixed = count
    while True:
        count = fixed or rng.choice((1, 2, 2, 3))
        kinds = [(rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(SIZES))) for _ in range(count)]
        unseen = any((z, c, s) in HELD_OUT for c, s, z in kinds)
        if unseen == held_out and len({k[:2] for k in kinds}) == count:  # the same colour and shape once
            break
    relation = relation or ("horizontal" if count == 3 or rng.random() < 0.5 else "vertical")
    # centres along the relation's axis, in order, 64 / count apart; jitter on both axes
    slots = [int((i + 0.5) * 64 / count) for i in range(count)]
    objects = []
    for (colour, shape, size), slot in zip(kinds, slots):
        r = SIZES[size]
        along = slot + rng.randint(-3, 3)
        across = rng.randint(r + 2, 63 - r - 2) if count == 1 else 32 + rng.randint(-6, 6)
        x, y = (along, across) if relation == "horizontal" else (across, along)
        x, y = min(max(x, r + 1), 62 - r), min(max(y, r + 1), 62 - r)
        objects.append({"shape": shape, "colour": colour, "size": size, "box": [x - r, y - r, x + r, y + r]})
    return _draw(rng, objects), {"captions": scene_captions(objects, relation), "objects": objects}


def scenes_corpus(out: str | Path, images: int = 6000, seed: int = 0) -> dict[str, int]:
    """OUT/{train,valid,test}: `images` training scenes, a tenth of it each for valid (seen
    objects) and test (each scene with at least one held-out object)."""
    out, rng = Path(out), random.Random(seed)
    counts = {"train": images, "valid": max(20, images // 10), "test": max(20, images // 10)}
    for name, n in counts.items():
        drawn = [random_scene(rng, held_out=name == "test") for _ in range(n)]
        write_split(out / name, [d[0] for d in drawn], [d[1] for d in drawn])
    return counts


def mirrored(pixels: np.ndarray) -> np.ndarray:
    """The scene seen in a mirror: left and right swapped."""
    return np.ascontiguousarray(pixels[:, ::-1])


# --------------------------------------------------------------------- digits


def digits_corpus(out: str | Path, strips: int = 8000, seed: int = 0) -> dict[str, int]:
    """OUT/{train,valid,test}: strips of 2-5 scanned digits (16 x 80 pixels, the scans scaled
    twice), captioned in words; the scans are split 80/10/10 first, so that valid and test strips
    are written by hands (scans) the model never saw."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise RnnkitError("the digits set needs scikit-learn: pip install scikit-learn") from None
    digits = load_digits()
    scans = (digits.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8)
    order = np.random.default_rng(seed).permutation(len(scans))
    cut = [int(0.8 * len(order)), int(0.9 * len(order))]
    pools = {"train": order[: cut[0]], "valid": order[cut[0] : cut[1]], "test": order[cut[1] :]}
    counts = {"train": strips, "valid": max(20, strips // 16), "test": max(20, strips // 8)}
    rng = np.random.default_rng(seed + 1)
    for name, n in counts.items():
        images, records = [], []
        for _ in range(n):
            picks = rng.choice(pools[name], size=int(rng.integers(2, 6)))
            strip = np.zeros((16, 80), dtype=np.uint8)
            for j, k in enumerate(picks):
                strip[:, 16 * j : 16 * j + 16] = scans[k].repeat(2, 0).repeat(2, 1)
            images.append(np.repeat(strip[:, :, None], 3, axis=2))
            records.append({"captions": [" ".join(WORDS_OF_DIGITS[digits.target[k]] for k in picks)]})
        write_split(Path(out) / name, images, records)
    return counts
