"""Training on several processes and machines: PyTorch's DistributedDataParallel, launched by torchrun.

    torchrun --standalone --nproc-per-node 2 -m rnnkit train ...          two processes, one machine
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
             --rdzv-endpoint HOST:29500 -m rnnkit train ...                 sixteen, on two machines

torchrun starts the processes and gives each its RANK, LOCAL_RANK and WORLD_SIZE in the
environment; `setup` joins them into one process group (gloo on a CPU, NCCL on CUDA with one GPU
per process). Every process builds the same model from the same seed and reads its own share of
every batch (the language model: B / W of the B parallel streams); DDP averages the gradients,
so that each step is the step one process would take on the whole batch and the weights stay
equal everywhere. Rank 0 evaluates, writes the model directory and reports. Every decision that
shapes or ends the run (a non-finite loss, the time budget, Ctrl-C, the best model, the plateau
schedule) is taken on figures all the processes share, so they agree on it.

An error that every process meets is said once, by rank 0; the others raise `Follower`, which
the command line turns into a quiet non-zero exit.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import RnnkitError

# what gloo and NCCL say when a process of the job is gone
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "timed out")


@dataclass(frozen=True)
class Group:
    """This process's place in the job."""

    rank: int  # 0 .. world_size - 1, over every machine
    world_size: int  # W, the processes of the job
    device: torch.device  # this process's device (cuda:LOCAL_RANK on a GPU machine)

    @property
    def main(self) -> bool:
        return self.rank == 0


def leads(group: Group | None) -> bool:
    """Whether this process speaks for the job: it trains alone, or it is rank 0."""
    return group is None or group.main


class Follower(RnnkitError):
    """An error all the processes met: rank 0 says it, the others stop quietly with this."""


def restart_count() -> int:
    """How many times torchrun has restarted the job (--max-restarts): 0 on the first attempt."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def current(device: torch.device | None = None) -> Group | None:
    """The group this process has joined, or None when it trains alone."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    return Group(dist.get_rank(), dist.get_world_size(), _local_device(device or torch.device("cpu")))


def _local_device(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:  # one GPU per process on its machine
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def setup(device: torch.device) -> tuple[Group | None, torch.device]:
    """Join the job torchrun started, once per process (later calls return the same group), and
    return it with this process's device; outside torchrun (WORLD_SIZE unset or 1): (None, device)."""
    if current() is None and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        device = _local_device(device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        try:
            store, rank, world_size = next(dist.rendezvous("env://"))
            # keys of their own for each attempt: torchrun's store outlives a restart, and a process of
            # the new attempt could otherwise read where a process of the last one listened (gloo)
            store = dist.PrefixStore(f"rnnkit/attempt-{restart_count()}", store)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank,
                                    world_size=world_size)
        except (RuntimeError, ValueError) as error:
            raise RnnkitError(f"cannot join the torchrun job: {str(error).splitlines()[0]}") from None
        atexit.register(_leave)
    group = current(device)
    return group, (group.device if group is not None else device)


def leave(group: Group | None) -> None:
    """Leave the job together, once every process is done with it: the processes wait for each
    other before the group goes, so that none tears down its connections while another still
    uses them (a process left alone to exit first was seen to abort in gloo's teardown)."""
    if group is not None and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _leave() -> None:  # at exit, after an error: no waiting for processes that may be gone
    if dist.is_initialized():
        dist.destroy_process_group()


def lost_peer(error: BaseException) -> bool:
    """Whether `error` says another process of the job is gone (a collective that broke)."""
    return isinstance(error, getattr(dist, "DistError", ())) or (
        isinstance(error, RuntimeError) and any(s in str(error) for s in _PEER_LOST))


def shared_error(group: Group | None, message: str) -> RnnkitError:
    """The error for a problem every process met: said by rank 0, quiet elsewhere."""
    return RnnkitError(message) if leads(group) else Follower(message)


def _agree(group: Group, problem: str | None) -> None:
    """Fail on every process where any met a problem (a message; None: none): rank 0 says the
    first one, naming the rank that met it."""
    problems: list[str | None] = [None] * group.world_size
    dist.all_gather_object(problems, problem)
    for rank, found in enumerate(problems):
        if found is not None:
            raise shared_error(group, found if rank == 0 or found == problems[0] else f"rank {rank}: {found}")


@contextlib.contextmanager
def together(group: Group | None) -> Iterator[None]:
    """Run the block on every process; if it fails with an RnnkitError on any, it fails on all."""
    if group is None:
        yield
        return
    own: RnnkitError | None = None
    try:
        yield
    except RnnkitError as error:
        own = error
    try:
        _agree(group, None if own is None else str(own))
    except RnnkitError:
        if group.main and own is not None:
            raise own from None  # as raised (a ParameterError keeps its parameter)
        raise


def check_same(group: Group | None, settings: dict[str, Any]) -> None:
    """RnnkitError (on rank 0) unless every process was started with rank 0's `settings`."""
    if group is None:
        return
    every: list[Any] = [None] * group.world_size
    dist.all_gather_object(every, settings)
    for rank, theirs in enumerate(every[1:], start=1):
        if theirs != every[0]:
            changed = sorted(k for k in every[0].keys() | theirs.keys() if every[0].get(k) != theirs.get(k))
            raise shared_error(group, f"the processes of the job were started with different settings: rank {rank} "
                                      f"differs from rank 0 in {', '.join(changed)}; start them all with the same command")


def broadcast(group: Group | None, value: Any) -> Any:
    """Rank 0's `value` on every process."""
    if group is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_set(group: Group | None, *flags: bool) -> tuple[bool, ...]:
    """Each flag, true where it is true on any process."""
    if group is None:
        return flags
    votes = torch.tensor([int(f) for f in flags], device=group.device)
    dist.all_reduce(votes)
    return tuple(bool(v) for v in votes.tolist())


def mean(group: Group | None, values: Tensor) -> Tensor:
    """The mean of `values` over the processes (itself alone)."""
    if group is None:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / group.world_size


def gather(group: Group | None, state: Any, dim: int) -> Any:
    """A nested state (tuples of tensors) whose tensors each process holds a shard of along `dim`,
    made whole on every process: the shards in rank order."""
    if group is None or state is None:
        return state
    if isinstance(state, Tensor):
        shards = [torch.empty_like(state) for _ in range(group.world_size)]
        dist.all_gather(shards, state.contiguous())
        return torch.cat(shards, dim=dim)
    return type(state)(gather(group, s, dim) for s in state)


def shard(group: Group | None, state: Any, dim: int) -> Any:
    """This process's share of a whole nested state: the rank-th of W equal parts along `dim`."""
    if group is None or state is None:
        return state
    if isinstance(state, Tensor):
        return state.chunk(group.world_size, dim=dim)[group.rank].contiguous()
    return type(state)(shard(group, s, dim) for s in state)


def gather_rng(group: Group) -> dict[str, Tensor]:
    """Every process's random-number generator states (the CPU's, and the GPU's on CUDA), stacked
    by rank: (W, n) each."""
    states = {"rng": torch.get_rng_state()}
    if group.device.type == "cuda":
        states["cuda_rng"] = torch.cuda.get_rng_state(group.device)
    every: list[Any] = [None] * group.world_size
    dist.all_gather_object(every, states)  # small byte tensors, through the CPU whatever the backend
    return {name: torch.stack([e[name] for e in every]) for name in states}


def set_rng(group: Group, saved: dict[str, Tensor]) -> bool:
    """Restore this process's generators from `gather_rng`'s states; False (nothing set) when
    they were saved by a job of another size."""
    if saved["rng"].shape[0] != group.world_size:
        return False
    torch.set_rng_state(saved["rng"][group.rank].clone())  # a row of its own: a view is refused
    if group.device.type == "cuda" and "cuda_rng" in saved:
        torch.cuda.set_rng_state(saved["cuda_rng"][group.rank].clone(), group.device)
    return True
