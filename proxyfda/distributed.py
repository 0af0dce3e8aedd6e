"""Running on several processes: the one place that talks to ``torch.distributed``.

Launched by ``torchrun`` (``torchrun --nproc_per_node 2 -m proxyfda finetune ...``), every process
finds ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in its environment.
`init_from_env` joins the process group they describe (Gloo for CPU tensors, NCCL for CUDA tensors
when there are GPUs, each process on GPU ``LOCAL_RANK``); without them (or with one process) every
helper here is the single-process identity, so callers never branch on whether a run is distributed.

What the helpers are for:

* `shard`: this rank's contiguous share of N rows (extraction shards images, training its batch).
* `gather_rows`: a differentiable all-gather. Its backward **sums** the gradient that every rank's loss
  sends to a row, so when every rank computes the same loss over the gathered rows (FDA's kNN graph
  over the global batch), each row receives world_size × ∂loss/∂row, and DistributedDataParallel's
  averaging of parameter gradients over the ranks divides that world_size out again: the update is
  exactly the single-process gradient of the loss over the global batch.
* `gather_shards`: every rank's (unevenly sized) shard of an array, in rank order, on every rank.
* `mean_over_ranks`, `average_gradients`: logged figures and the gradients of modules DDP does not wrap.
* `on_main`: a call on rank 0 alone (writing files, evaluating) whose result every rank receives; the
  others wait for it. Inside it rank 0 acts as a single process, so nothing it calls can wait for ranks
  that are not there.
* `wrap`: DistributedDataParallel around a module (SyncBatchNorm on GPUs when BatchNorm trains).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import warnings
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn

from .errors import ProxyFDAError

T = TypeVar("T")

#: set while rank 0 runs an `on_main` call: it then acts as a single process
_solo = False


def env_world_size() -> int:
    """The number of processes ``torchrun`` started (``WORLD_SIZE``), 1 when not launched by it."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ProxyFDAError(f"WORLD_SIZE is {os.environ['WORLD_SIZE']!r}, not a number; launch with torchrun, "
                            "or unset WORLD_SIZE for a single process") from None


def init_from_env() -> None:
    """Join the process group ``torchrun`` describes, once per process (a no-op for a single process).

    Gloo carries CPU tensors, NCCL CUDA ones when GPUs are present (``cpu:gloo,cuda:nccl``); each process
    then works on GPU ``LOCAL_RANK``, so a plain ``"cuda"`` device means that rank's own GPU. The group is
    left when the process exits.
    """
    if env_world_size() <= 1 or (torch_dist.is_available() and torch_dist.is_initialized()):
        return
    if not torch_dist.is_available():
        raise ProxyFDAError("this torch build has no torch.distributed, so it cannot run under torchrun; "
                            "run one process, or install a torch build with distributed support")
    missing = [name for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise ProxyFDAError(f"WORLD_SIZE is {env_world_size()} but {', '.join(missing)} "
                            f"{'is' if len(missing) == 1 else 'are'} not set; launch with "
                            "`torchrun --nproc_per_node N -m proxyfda ...`, which sets them all")
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    torch_dist.init_process_group(backend)
    atexit.register(cleanup)


def cleanup() -> None:
    """Leave the process group (registered to run at exit by `init_from_env`)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def active() -> bool:
    """Whether this process is one of several working together now (False inside `on_main`)."""
    return not _solo and torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1


def world_size() -> int:
    return torch_dist.get_world_size() if active() else 1


def rank() -> int:
    return torch_dist.get_rank() if active() else 0


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes files and prints (True for a single process)."""
    return rank() == 0


def shard(n: int, of_rank: int | None = None) -> slice:
    """This rank's (or rank ``of_rank``'s) contiguous share of ``n`` rows: sizes differ by at most one,
    lower ranks take the extra rows, and the shards in rank order are the rows in order."""
    r = rank() if of_rank is None else of_rank
    size, extra = divmod(n, world_size())
    start = r * size + min(r, extra)
    return slice(start, start + size + (r < extra))


def barrier() -> None:
    """Wait until every rank gets here."""
    if active():
        torch_dist.barrier()


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 (equal shares); backward sums the gradients over the ranks and keeps this
    rank's rows. Gloo has no reduce-scatter, so the sum is one all-reduce of the gathered gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(torch_dist.get_world_size())]
        torch_dist.all_gather(parts, x.contiguous())
        ctx.rows = slice(torch_dist.get_rank() * len(x), (torch_dist.get_rank() + 1) * len(x))
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)  # never reduce autograd's own buffer in place
        torch_dist.all_reduce(grad)
        return grad[ctx.rows]


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` [b, ...] stacked in rank order [world_size · b, ...], gradients flowing back to
    each rank's own rows (summed over the ranks' losses; see the module docstring for the scaling).
    Every rank must pass the same number of rows. A single process gets ``x`` itself."""
    if not active():
        return x
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world_size())]
    torch_dist.all_gather(sizes, torch.tensor([len(x)], device=x.device))
    if len({int(s) for s in sizes}) != 1:
        raise ProxyFDAError(f"the ranks hold {[int(s) for s in sizes]} rows: a gathered batch needs the same "
                            "number on every rank; make the batch size a multiple of the number of processes")
    return _GatherRows.apply(x)


def gather_shards(local: np.ndarray, n: int) -> np.ndarray:
    """The `shard` of ``n`` rows each rank computed (``local``), concatenated in rank order on every rank."""
    if not active():
        return local
    longest = -(-n // world_size())  # Gloo carries CPU tensors whatever the devices
    padded = torch.zeros((longest, *local.shape[1:]), dtype=torch.from_numpy(local[:0]).dtype)
    padded[:len(local)] = torch.from_numpy(local)
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    torch_dist.all_gather(parts, padded)
    sizes = [len(range(n)[shard(n, r)]) for r in range(world_size())]
    return np.concatenate([part[:size].cpu().numpy() for part, size in zip(parts, sizes)])


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the ranks (one all-reduce): per-rank means of equal shares become the
    global batch's means, as a single process would have logged them."""
    if not active() or not values:
        return values
    summed = torch.tensor(list(values.values()), dtype=torch.float64)
    torch_dist.all_reduce(summed)
    return dict(zip(values, (summed / world_size()).tolist()))


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Average the gradients of parameters that DistributedDataParallel does not hold (the proxy
    generator, learnable τ and b) over the ranks, so every rank takes the same step."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not active() or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch_dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on rank 0 alone, its result returned on every rank (the others wait).

    While it runs, rank 0 acts as a single process (`active` is False), so what ``fn`` calls never waits
    for the others. A single process just calls ``fn``.
    """
    if not active():
        return fn(*args, **kwargs)
    result = [None]
    if is_main():
        with _alone():
            result[0] = fn(*args, **kwargs)
    torch_dist.broadcast_object_list(result, src=0)
    return result[0]


@contextlib.contextmanager
def _alone() -> Iterator[None]:
    global _solo
    previous, _solo = _solo, True
    try:
        yield
    finally:
        _solo = previous


def wrap(module: nn.Module, sync_batchnorm: bool = False) -> nn.Module:
    """``module`` in DistributedDataParallel (gradients averaged over the ranks as they are computed), or
    ``module`` itself in a single process.

    ``sync_batchnorm``: BatchNorm layers that train should see the global batch's statistics. On GPUs
    they become SyncBatchNorm; PyTorch has none for CPU tensors, so on CPUs each rank normalises by its
    own share's statistics (and DDP copies rank 0's running statistics to the others at every step):
    such a run is not identical to a single process, and says so with a warning.
    """
    if not active():
        return module
    device = next(module.parameters()).device
    if sync_batchnorm and device.type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    elif sync_batchnorm and is_main():
        warnings.warn("BatchNorm trains (bn_mode='train') on CPUs across processes: each process normalises by "
                      "the statistics of its own share of the batch (PyTorch's SyncBatchNorm needs GPUs), so "
                      "this run differs from a single-process one; the default bn_mode='frozen' does not",
                      stacklevel=2)
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    # EfficientNet's depthwise kernels [C, 1, k, k] get gradients whose stride along the size-1 axis differs
    # from the parameter's: the same memory layout, reported once per process as a possible slowdown
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


__all__ = ["active", "average_gradients", "barrier", "cleanup", "env_world_size", "gather_rows", "gather_shards",
           "init_from_env", "is_main", "mean_over_ranks", "on_main", "rank", "shard", "world_size", "wrap"]
