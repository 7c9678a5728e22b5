"""Test-wide settings: no network, a private HF cache, few threads, fixed seeds.

The Hub environment is set before anything imports ``huggingface_hub`` (it reads it at import).
Tests that need a Hub start their own local server and point the client at it.
"""
import os
import tempfile

_HF_HOME = tempfile.mkdtemp(prefix="bigmoe-test-hf-")
os.environ.setdefault("HF_HOME", _HF_HOME)
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Nothing listens on port 9 (discard): any accidental Hub call fails fast instead of hanging.
os.environ.setdefault("HF_ENDPOINT", "http://127.0.0.1:9")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if os.environ.get("RUN_SLOW"):
        return
    skip = pytest.mark.skip(reason="slow: set RUN_SLOW=1 (heavy checks live in benchmarks/)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
