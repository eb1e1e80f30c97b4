"""More than one process: ``torchrun --nproc_per_node N -m qkernels.train run ...``.

torchrun sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; with more than one process the model trains under
``DistributedDataParallel`` (gloo on the CPU, nccl on CUDA), each rank taking its contiguous share of every
global batch. Gradients are averaged across ranks, so a step is the step of one process on the global batch
up to the order of float additions. BatchNorm computes its batch statistics per rank (``SyncBatchNorm`` on
CUDA), and DDP broadcasts rank 0's buffers (running stats, quantizer flags) before every forward.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Group:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def share(self, batch_size: int) -> slice:
        """This rank's slice of a global batch of ``batch_size`` (divisible by the world size)."""
        local = batch_size // self.world
        return slice(self.rank * local, (self.rank + 1) * local)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over ranks (a new tensor; itself with one process)."""
        if not self.active:
            return values
        total = values.clone()
        dist.all_reduce(total)
        return total

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        if not self.active:
            return model
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    def close(self):
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def join(device: str) -> tuple:
    """(``Group``, the device this rank uses). Starts the process group when torchrun launched several."""
    if world_size() <= 1:
        return Group(), torch.device(device)
    on_cuda = torch.device(device).type == "cuda"
    dist.init_process_group("nccl" if on_cuda else "gloo")
    group = Group(dist.get_rank(), dist.get_world_size())
    if on_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return group, torch.device("cuda", local)
    return group, torch.device(device)
