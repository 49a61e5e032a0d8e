"""`rnnkit data get|list|household`: fetch standard corpora into the data folder (checked against
pinned checksums, resumable), list them, or write the generated household corpus."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tqdm import tqdm

from ..errors import RnnkitError
from ..data import datasets
from ..demos.household import corpus as household


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "data",
        help="download standard corpora, or generate the household corpus",
        description="Download standard corpora (checked against pinned SHA-256 sums, resumable) "
        "or write the generated household corpus.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    get = actions.add_parser(
        "get",
        help="download a corpus into the data folder",
        description="Download a corpus into DIR/NAME, resuming a broken download and refusing "
        "files whose checksum differs from the pinned one. A file already in place with the right "
        "checksum is not downloaded again. $RNNKIT_DATA_MIRROR replaces the addresses by "
        "MIRROR/NAME/FILE.",
    )
    get.add_argument("name", choices=sorted(datasets.REGISTRY), metavar="NAME",
                     help=f"one of: {', '.join(sorted(datasets.REGISTRY))}")
    get.add_argument("--dir", help="data folder (default: $RNNKIT_DATA or ~/.cache/rnnkit/data)")
    get.add_argument("--timeout", type=float, default=60.0,
                     help="seconds to wait for a server to connect or send more (default: %(default)s)")
    get.set_defaults(run=run_get)

    listing = actions.add_parser("list", help="list the corpora and whether each is downloaded")
    listing.add_argument("--dir", help="data folder (default: $RNNKIT_DATA or ~/.cache/rnnkit/data)")
    listing.set_defaults(run=run_list)

    gen = actions.add_parser(
        "household",
        help="write the household corpus (everyday scenes with a long-range cue)",
        description="Write sentences like 'i picked up the remote controller on the couch and "
        "turned on the television', one a line, in which the object picked up decides the device "
        "at the end, with distractor clauses between them.",
    )
    gen.add_argument("--out", required=True, help="output text file (replaced atomically)")
    gen.add_argument("--sentences", type=int, default=household.DEFAULT_SENTENCES,
                     help="number of sentences (default: %(default)s)")
    gen.add_argument("--max-distance", type=int, default=household.DEFAULT_MAX_DISTANCE,
                     help=f"most words between the object and the device, at least "
                     f"{household.MIN_DISTANCE} (default: %(default)s)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    gen.set_defaults(run=run_household)


def run_get(args: argparse.Namespace) -> int:
    bars = _Bars()
    try:
        folder = datasets.download(args.name, args.dir, progress=bars, status=bars.status, timeout=args.timeout)
    finally:
        bars.close()
    splits = datasets.split_paths(args.name, folder.parent)
    print(f"{args.name}: ready in {folder} ({', '.join(f'{s}: {p.name}' for s, p in splits.items())})")
    return 0


def run_list(args: argparse.Namespace) -> int:
    for name, dataset in sorted(datasets.REGISTRY.items()):
        try:
            datasets.split_paths(name, args.dir)
            state = "downloaded"
        except RnnkitError:
            state = "not downloaded"
        print(f"{name:16} {state:15} {dataset.description}")
    return 0


def run_household(args: argparse.Namespace) -> int:
    path = household.write_corpus(args.out, args.sentences, args.max_distance, args.seed)
    print(f"wrote {args.sentences} sentences to {path} (distances {household.MIN_DISTANCE}-"
          f"{args.max_distance} words, {len(household.DEVICES)} devices, seed {args.seed})")
    return 0


class _Bars:
    """A tqdm bar per file, fed by `datasets.download`'s progress callback."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.bar: tqdm | None = None

    def __call__(self, name: str, done: int, total: int | None) -> None:
        if self.bar is None or name != self.name:
            self.close()
            self.name = name
            self.bar = tqdm(total=total, initial=done, desc=name, unit="B", unit_scale=True,
                            unit_divisor=1024, leave=True)
        elif done < self.bar.n:  # the server ignored a range request: the file restarts
            self.bar.reset(total=total)
            self.bar.update(done)
        else:
            self.bar.update(done - self.bar.n)

    @staticmethod
    def status(message: str) -> None:
        tqdm.write(message, file=sys.stderr)  # above the bars

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
