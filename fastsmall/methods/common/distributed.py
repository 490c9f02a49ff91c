"""torch.distributed for method pipelines: started by torchrun, gloo on CPU, nccl on CUDA.

Without torchrun (no WORLD_SIZE in the environment) everything degrades to one
process: rank 0 of 1, reductions are identities.

Every collective waits at most ``timeout`` seconds (``--dist-timeout``): a rank that stops
responding (killed, stopped, stuck) ends the run on the other ranks with a
:class:`DistributedTimeout` naming the limit, instead of a silent wait.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


DEFAULT_TIMEOUT_S = 600.0


class DistributedTimeout(RuntimeError):
    """Another process did not take part in a collective within the time limit."""


def is_timeout(exc: BaseException) -> bool:
    """Whether a torch.distributed error is a collective that timed out (gloo and NCCL word it so)."""
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("timed out" in text or "timeout" in text)


class Distributed:
    def __init__(self, device: torch.device, timeout: float = DEFAULT_TIMEOUT_S):
        self.timeout = float(timeout)
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world_size > 1
        if self.enabled and not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=self.timeout))
        self.device = device

    @classmethod
    def alone(cls, device: torch.device, timeout: float = DEFAULT_TIMEOUT_S) -> "Distributed":
        """Rank 0 of 1, even inside a torchrun job: for work one process does on its own (its
        share of ``--seeds``); its reductions are identities and it writes its own files."""
        self = cls.__new__(cls)
        self.timeout, self.world_size, self.rank, self.local_rank = float(timeout), 1, 0, 0
        self.enabled, self.device = False, device
        return self

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_gather_cat(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate equally-shaped tensors from every rank along dim 0 (rank order)."""
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def all_gather_ragged(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate 1-d tensors of any length from every rank (rank order), on ``tensor``'s device."""
        if not self.enabled:
            return tensor
        home = tensor.device
        local = tensor.to(self.device)
        counts = self.all_gather_cat(torch.tensor([local.numel()], device=self.device)).tolist()
        padded = torch.zeros(max(counts), dtype=local.dtype, device=self.device)
        padded[:local.numel()] = local
        parts = self.all_gather_cat(padded).view(self.world_size, -1)
        return torch.cat([row[:n] for row, n in zip(parts, counts)]).to(home)

    def average_gradients(self, model: torch.nn.Module) -> None:
        """Average ``model``'s gradients over ranks in one all-reduce (what DDP does, for models
        whose ``requires_grad`` changes from step to step, which DDP does not allow)."""
        if not self.enabled:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def broadcast_buffers(self, *models: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm statistics) on every rank."""
        if self.enabled:
            for model in models:
                for b in model.buffers():
                    dist.broadcast(b, 0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def timeout_error(self, exc: BaseException) -> DistributedTimeout:
        return DistributedTimeout(f"rank {self.rank} of {self.world_size}: another process did not respond within "
                                  f"{self.timeout:g} s (--dist-timeout); stopping the run ({' '.join(str(exc).split())[:200]})")

    def close(self, *, wait: bool = True) -> None:
        """Leave the process group; with ``wait`` all ranks leave together (a rank that tears
        gloo down while another still talks to it can abort at exit)."""
        if self.enabled and dist.is_initialized():
            if wait:
                try:
                    dist.barrier()
                except RuntimeError:  # a peer is gone or stuck: leave anyway
                    pass
            dist.destroy_process_group()
