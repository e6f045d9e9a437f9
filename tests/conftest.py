"""Shared test fixtures: reference (dalle-pytorch 1.6.6) parity cases, committed and live."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from helpers import MAKE_FIXTURES, peer_python

LIVE_SEED = 20260


@pytest.fixture(scope="session")
def live_fixture_dir(tmp_path_factory) -> Path:
    """Fresh parity cases built by the live reference with a new seed (skips when it is not installed)."""
    python = peer_python()
    if python is None:
        pytest.skip("live reference not available: set DALLE_CORE_PEER_PYTHON to a dalle-pytorch 1.6.6 venv python")
    out = tmp_path_factory.mktemp("live_reference")
    subprocess.run([python, str(MAKE_FIXTURES), str(out), "--seed", str(LIVE_SEED)], check=True,
                   capture_output=True, text=True)
    return out


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield

