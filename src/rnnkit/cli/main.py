"""The `rnnkit` parser and entry point; each command lives in `rnnkit.cli.<name>`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .._version import __version__
from ..allocator import keep_freed_memory
from ..errors import ParameterError, RnnkitError
from ..training import distributed
from ..training.distributed import Follower

# the subcommand modules, in the order `rnnkit --help` lists them
COMMANDS: tuple[str, ...] = ("demo", "train", "use", "data", "memory", "gradients", "tasks", "translate", "caption", "speech",
                             "serve", "export")


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors reported on one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rnnkit",
        description="Recurrent neural networks (Elman, LSTM, GRU): train, use and study them.",
    )
    parser.add_argument("--version", action="version", version=f"rnnkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f".{name}", __package__).register(sub)
    _remember_parsers(parser)
    return parser


def _remember_parsers(parser: argparse.ArgumentParser) -> None:
    """Let every (sub)command's parsed arguments know the parser that read them, whose flags
    `in_flag_words` names."""
    parser.set_defaults(parser=parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _remember_parsers(sub)


def in_flag_words(error: RnnkitError, args: argparse.Namespace) -> str:
    """The library names parameters (`top_k must be ...`); where the value came from a flag, say
    the flag (`--top-k must be ...`). A command maps parameters to its flags' names in `params`
    where they differ more than by dashes (hidden_size -> --hidden)."""
    message, param = str(error), getattr(error, "param", None)
    if not isinstance(error, ParameterError) or not message.startswith(param or "\0"):
        return message
    dest = getattr(args, "params", {}).get(param, param)
    flags = {a.dest: max(a.option_strings, key=len) for a in args.parser._actions if a.option_strings}
    if dest not in flags or getattr(args, dest, None) is None:
        return message  # set in a --config file or a saved model, not by a flag
    return flags[dest] + message[len(param):]


def main(argv: Sequence[str] | None = None) -> int:
    keep_freed_memory()
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.run(args) or 0)
    except Follower:  # rank 0 of the job says it
        return 1
    except RnnkitError as error:
        group = distributed.current()
        rank = "" if distributed.leads(group) else f"[rank {group.rank}] "
        print(f"rnnkit: error: {rank}{in_flag_words(error, args)}", file=sys.stderr)
        return 1
    except OSError as error:  # a folder that cannot be written, a disk that is full: say which file
        where = f": {error.filename}" if error.filename else ""
        print(f"rnnkit: error: {error.strerror or error}{where}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as error:  # PyTorch's allocators raise RuntimeError
        if isinstance(error, RuntimeError) and "allocate" not in str(error):
            raise
        said = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"rnnkit: error: not enough memory ({said}); try a smaller model or batch", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rnnkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
