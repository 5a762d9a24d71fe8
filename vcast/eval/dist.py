"""Several processes through PyTorch's own launcher: `torchrun --nproc-per-node K -m vcast.eval ...`.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; with WORLD_SIZE > 1 the ranks join a process group only to
wait for one another (barriers), so the gloo backend serves on CPUs and GPUs alike and no tensor ever
crosses it. Each rank runs its own share of the items and writes its own results file.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Rank:
    """This process's place among the workers: rank in [0, world_size), local_rank on its host."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return int(value) if value not in (None, "") else default
    except ValueError as err:
        raise ValueError(f"{name}={value!r} must be a whole number (it is set by torchrun)") from err


def rank_from_env() -> Rank:
    """The rank torchrun gave this process, or the single process when WORLD_SIZE is not set."""
    world = _env_int("WORLD_SIZE", 1)
    rank = Rank(rank=_env_int("RANK", 0), world_size=world, local_rank=_env_int("LOCAL_RANK", 0))
    if not 0 <= rank.rank < world or world < 1:
        raise ValueError(f"RANK={rank.rank} does not fit WORLD_SIZE={world}")
    return rank


def init(rank: Rank, timeout_h: float) -> None:
    """Join the process group when there are several ranks. `timeout_h` bounds how long a rank that
    finished waits at a barrier for the slowest one (hours: one rank may get the longest videos)."""
    if rank.distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(hours=timeout_h))


def barrier(rank: Rank) -> None:
    if rank.distributed:
        torch.distributed.barrier()


def shutdown(rank: Rank) -> None:
    if rank.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def shard(items: list, rank: Rank) -> list:
    """This rank's share: every world_size-th item starting at its rank (long and short videos spread)."""
    return items[rank.rank :: rank.world_size]


def device_map_for(rank: Rank, gpus_per_rank: int | None) -> str | dict:
    """Where this rank's model copy goes. One GPU per rank: the whole model on cuda:LOCAL_RANK. With
    gpus_per_rank = G > 1 (a model too large for one GPU, e.g. 32B): the rank's G consecutive GPUs,
    layers spread by accelerate ("auto" over those GPUs only). Without CUDA: the CPU."""
    if not torch.cuda.is_available():
        return "cpu"
    if not gpus_per_rank:
        return {"": f"cuda:{rank.local_rank}"} if rank.distributed else "auto"
    first = rank.local_rank * gpus_per_rank
    if first + gpus_per_rank > torch.cuda.device_count():
        raise ValueError(
            f"rank {rank.local_rank} needs GPUs {first}-{first + gpus_per_rank - 1} but this host has "
            f"{torch.cuda.device_count()}: use --nproc-per-node <= GPUs / --gpus-per-rank"
        )
    return "auto"


def max_memory_for(rank: Rank, gpus_per_rank: int | None) -> dict | None:
    """accelerate's max_memory that confines "auto" placement to this rank's GPUs (None: no limit)."""
    if not gpus_per_rank or not torch.cuda.is_available():
        return None
    first = rank.local_rank * gpus_per_rank
    # 85% of each GPU for weights: the rest holds activations, the KV cache and the vision tower's work.
    return {
        i: int(0.85 * torch.cuda.get_device_properties(i).total_memory) for i in range(first, first + gpus_per_rank)
    }
