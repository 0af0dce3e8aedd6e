"""Where computation runs: CUDA when present, the CPU always."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ProxyFDAError

if TYPE_CHECKING:
    import torch


def default_device() -> "torch.device":
    """The fastest device on this machine: the first CUDA GPU if there is one, else the CPU."""
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_device(device: "str | torch.device | None") -> "torch.device":
    """Turn a user's choice ("auto", "cpu", "cuda", None) into a device, refusing CUDA without a GPU."""
    import torch

    if device is None or device == "auto":
        return default_device()
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ProxyFDAError("device 'cuda' was asked for but no GPU is visible; use device='cpu' or 'auto'")
    return device
