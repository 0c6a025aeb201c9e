"""What the local Hugging Face cache holds and whether the hub can be reached, answered without a hub call.

Asked before a hub model is loaded, so that a machine without the weights and without internet fails
at once with a message naming ``--local-files-only``, instead of after the hub client's retries.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache this process reads, from the environment as it is now (HF_HUB_CACHE, HF_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def is_cached(repo_id: str, revision: str | None = None) -> bool:
    """Whether a diffusers pipeline's index and denoiser config (U-Net or transformer) are in the local hub cache
    (no network)."""
    from huggingface_hub import try_to_load_from_cache

    def cached(name: str) -> bool:
        return isinstance(try_to_load_from_cache(repo_id, name, cache_dir=hub_cache_dir(), revision=revision), str)

    return cached("model_index.json") and (cached("unet/config.json") or cached("transformer/config.json"))


def hub_offline(local_files_only: bool) -> bool:
    """No hub call is allowed: ``--local-files-only``, or HF_HUB_OFFLINE set (now or when the hub was imported)."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return local_files_only or flag or bool(constants.HF_HUB_OFFLINE)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host answers a TCP connection within ``timeout`` s: one quick look instead of the
    hub client's retries (~25 s) on a machine without internet."""
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True
