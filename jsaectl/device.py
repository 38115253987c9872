"""Which device a stage runs on (--device): one rule for every stage."""

from __future__ import annotations

import torch

from jsaectl.errors import ModelError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"--device {name} asked for, but no CUDA device is available", hint="use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelError("--device mps asked for, but MPS is not available", hint="use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ModelError(f"unknown device {name!r}", hint="use auto, cpu, cuda, cuda:N or mps") from e
