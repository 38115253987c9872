"""Whether the Hugging Face Hub can be reached: one check for models and datasets, so that a
machine without network fails in seconds rather than after a minute of retries."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


def offline(datasets: bool = False) -> bool:
    """The user said so: HF_HUB_OFFLINE (and, for datasets, HF_DATASETS_OFFLINE)."""
    hub = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    return hub or (datasets and os.environ.get("HF_DATASETS_OFFLINE") == "1")


def reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check, so that a machine without network fails in seconds rather than
    after huggingface_hub's minute of retries. Skipped (assumed reachable) behind a proxy."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", endpoint.port or 443), timeout=timeout):
            return True
    except OSError:
        return False
