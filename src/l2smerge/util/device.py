"""The `--device` values l2smerge accepts, checked before any model is read."""

from __future__ import annotations

import re

from l2smerge.util.errors import L2SError

_DEVICE = re.compile(r"(cpu|cuda|mps)(:\d+)?")


def check_device(device: str, option: str = "--device", *, available: bool = True) -> str:
    """`device` if it names a torch device type l2smerge runs on (cpu, cuda, cuda:N, mps);
    with `available`, also that such a device is present. Else a one-line error."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise L2SError(f"{option} {device!r}: not a device; use cpu, cuda, cuda:N or mps")
    if not available:
        return device
    import torch

    kind, _, index = device.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise L2SError(f"{option} {device}: no CUDA device is available")
        if index and int(index) >= torch.cuda.device_count():
            raise L2SError(
                f"{option} {device}: only {torch.cuda.device_count()} CUDA device(s) here"
            )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise L2SError(f"{option} {device}: no MPS device is available")
    return device
