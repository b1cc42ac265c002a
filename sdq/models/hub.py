"""Fast, one-line failures for Hugging Face hub models that are not available offline.

``transformers`` retries an unreachable hub for ~30 s and then raises a long traceback. Before a
hub load we check the local HF cache and probe the endpoint (3 s); when the hub is unreachable we
either load from the cache (``local_files_only=True``) or raise :class:`SdqModelError` at once.

>>> kw = hub_load_kwargs("xlm-roberta-base")  # {"cache_dir": ...} (+ local_files_only=True if offline)
>>> with model_errors("xlm-roberta-base"):
...     AutoConfig.from_pretrained("xlm-roberta-base", **kw)
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from sdq.errors import SdqModelError

_TRUE = {"1", "true", "yes", "on"}
PROBE_TIMEOUT_S = 3.0


def hf_cache_dir() -> str:
    """The HF hub cache dir (``$HF_HUB_CACHE`` / ``$HF_HOME/hub`` / ``~/.cache/huggingface/hub``)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_CACHE") or (
        os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None)
    return str(Path(env or constants.HF_HUB_CACHE).expanduser())


def hub_offline_env() -> bool:
    """True when ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` ask for offline mode."""
    from huggingface_hub import constants

    env = any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return env or bool(constants.HF_HUB_OFFLINE)


@functools.lru_cache(maxsize=4)
def hub_reachable(endpoint: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub endpoint (or the https proxy) opens within ``timeout``."""
    from huggingface_hub import constants

    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return False
    ok: list[bool] = []

    def probe() -> None:  # in a thread: getaddrinfo has no timeout of its own
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(ok)


def is_cached(repo_id: str, filename: str = "config.json") -> bool:
    """Whether ``repo_id``'s ``filename`` is in the local HF hub cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, filename, cache_dir=hf_cache_dir()), str)
    except ValueError:  # HFValidationError: not a valid repo id
        return False


def not_found_message(name: str, why: str) -> str:
    """The one-line 'model not available' message: which model, where we looked, how to fix."""
    return (f"cannot load model '{name}' ({why}); looked in the HF cache {hf_cache_dir()} and for a "
            f"local dir {os.path.abspath(name)}; fix: pass a local dir via model.name_or_path=<dir>, "
            f"pre-download it into the HF cache (huggingface-cli download {name}), or use model=me5_small")


def hub_load_kwargs(repo_id: str) -> dict:
    """``from_pretrained`` kwargs for a hub id, or :class:`SdqModelError` at once when offline+uncached."""
    cached = is_cached(repo_id)
    cache = {"cache_dir": hf_cache_dir()}
    if hub_offline_env():
        if cached:
            return {**cache, "local_files_only": True}
        raise SdqModelError(not_found_message(repo_id, "offline mode (HF_HUB_OFFLINE) and not cached"))
    if not hub_reachable():
        if cached:
            return {**cache, "local_files_only": True}
        raise SdqModelError(not_found_message(repo_id, "the Hugging Face hub is unreachable and it is not cached"))
    return cache


def _load_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [OSError, ValueError, KeyError]
    for mod, cls in (("httpx", "HTTPError"), ("requests", "RequestException"),
                     ("huggingface_hub.errors", "HfHubHTTPError")):
        with contextlib.suppress(ImportError, AttributeError):
            errs.append(getattr(__import__(mod, fromlist=[cls]), cls))
    return tuple(errs)


@contextlib.contextmanager
def model_errors(name: str) -> Iterator[None]:
    """Turn loader errors (OSError, HFValidationError, HTTP errors...) into one-line SdqModelError."""
    try:
        yield
    except SdqModelError:
        raise
    except _load_errors() as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise SdqModelError(not_found_message(name, f"{type(e).__name__}: {first}")) from None
