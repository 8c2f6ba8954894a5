"""Fail fast, with a clear message, when a hub name is used without network."""

from __future__ import annotations

import os
import socket

from ..errors import SaelabError

HUB_HOST = "huggingface.co"


class OfflineError(SaelabError, RuntimeError):
    """A hub model or dataset was requested, but the hub cannot be reached."""


def require_hub(what: str, timeout: float = 3.0) -> None:
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise OfflineError(
            f"{what} must come from the Hugging Face hub, but offline mode is set "
            "(HF_HUB_OFFLINE); pass a local path or a builtin: name instead"
        )
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
    except OSError:
        raise OfflineError(
            f"{what} must be downloaded from the Hugging Face hub, which is not reachable from "
            "this machine; pass a local directory or file, or a builtin: name "
            "(builtin:smollm2-135m, builtin:wiki)"
        ) from None
