"""Multi-GPU (or multi-process CPU) training through torchrun: DistributedDataParallel, nothing
home-made. Without torchrun's environment every helper here is a no-op."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler


@dataclass
class DistState:
    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_name: str = "auto") -> DistState:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistState()
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    return DistState(True, dist.get_rank(), dist.get_world_size(), device)


def wrap(module: torch.nn.Module, state: DistState) -> torch.nn.Module:
    if not state.enabled:
        return module
    ids = [state.device.index] if state.device.type == "cuda" else None
    # nodes without masks leave the decoder's loss at zero in some batches
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def sampler(dataset, state: DistState, shuffle: bool, seed: int, epoch: int):
    if not state.enabled:
        return None
    s = DistributedSampler(dataset, num_replicas=state.world_size, rank=state.rank, shuffle=shuffle, seed=seed)
    s.set_epoch(epoch)
    return s


def any_rank(flag: bool, state: DistState) -> bool:
    """True on every rank when it is true on one (so all ranks stop together)."""
    if not state.enabled:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=state.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(state: DistState) -> None:
    if state.enabled:
        dist.barrier()
