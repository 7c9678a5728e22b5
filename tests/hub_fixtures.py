"""Pytest fixtures that run an in-memory Hub (``modeling_bigmoe.testing.local_hub``) for push/pull tests.

Use in a test module with ``from hub_fixtures import local_hub`` (or ``local_hub_module``), then push and
pull with the ordinary ``huggingface_hub`` / ``transformers`` calls; repositories created without a
namespace belong to ``"user"`` (``create_repo("demo")`` makes ``"user/demo"``)::

    from hub_fixtures import local_hub  # noqa: F401  (pytest fixture)

    def test_roundtrip(local_hub):
        model.push_to_hub("tiny")
        again = type(model).from_pretrained("user/tiny")

While a fixture is active: the client endpoint points at the server (``huggingface_hub.constants`` are
patched, see ``use_local_hub``), ``HF_TOKEN`` is a dummy token, the HF cache is a fresh temporary folder
(``huggingface_hub.constants.HF_HUB_CACHE``) and offline mode is off. Everything is restored and the server
is stopped (no thread left) at teardown. ``local_hub`` is per test; ``local_hub_module`` is shared by a
module's tests (faster, but repositories persist between them: use distinct repo names).
"""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Iterator

import pytest

from modeling_bigmoe.testing.local_hub import LocalHub, use_local_hub

LOCAL_HUB_TOKEN = "hf_local_hub_dummy_token"
LOCAL_HUB_USER = "user"


@contextlib.contextmanager
def local_hub_session(cache_dir: Path) -> Iterator[LocalHub]:
    """Start a LocalHub and point the clients and a fresh HF cache (``cache_dir``) at it; undo all on exit."""
    from huggingface_hub import constants

    cache_dir.mkdir(parents=True, exist_ok=True)
    hub = LocalHub(user=LOCAL_HUB_USER)
    with hub, use_local_hub(hub.url), pytest.MonkeyPatch.context() as mp:
        suffix = f"-{hub.url.rsplit(':', 1)[1]}"
        mp.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
        mp.setattr(constants, "HUGGINGFACE_HUB_CACHE", str(cache_dir))
        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        mp.setenv("HF_HUB_CACHE", str(cache_dir))
        mp.setenv("HF_TOKEN", LOCAL_HUB_TOKEN)
        mp.delenv("HF_HUB_OFFLINE", raising=False)
        mp.delenv("TRANSFORMERS_OFFLINE", raising=False)
        yield hub
    leftover = [t.name for t in threading.enumerate()
                if t.name.startswith("LocalHub-") and t.name.endswith(suffix)]
    if leftover:
        raise RuntimeError(f"LocalHub left threads running after stop(): {leftover}")


@pytest.fixture
def local_hub(tmp_path: Path) -> Iterator[LocalHub]:
    """A LocalHub for one test, with the clients pointed at it and an empty HF cache under ``tmp_path``."""
    with local_hub_session(tmp_path / "hf-hub-cache") as hub:
        yield hub


@pytest.fixture(scope="module")
def local_hub_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHub]:
    """A LocalHub shared by the tests of one module (repositories and the HF cache persist between them)."""
    with local_hub_session(tmp_path_factory.mktemp("hf-hub-cache")) as hub:
        yield hub
