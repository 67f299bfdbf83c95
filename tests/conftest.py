"""Shared fixtures: the embedded model (loaded once per session) and tiny random models."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="session")
def smol():
    """The embedded SmolLM2-135M-Instruct (float32, CPU)."""
    from probe.models import load_model

    return load_model("smollm2")


@pytest.fixture(scope="session")
def smol_ids(smol):
    """Two real sequences of 24 tokens from the stdlib corpus."""
    text = "The quick brown fox jumps over the lazy dog. " * 8
    ids = smol.tokenizer(text, return_tensors="pt").input_ids[:, :24]
    return torch.cat([ids, ids.flip(1)])


@pytest.fixture(scope="session")
def chrome() -> str:
    """The Chrome/Chromium that Plotly's exporter (kaleido) drives; without one the test skips,
    except under CI (``CI=true``), where it fails."""
    from analyses.report.export import INSTALL, chrome_path

    path = chrome_path()
    if path is None:
        message = f"a real Chrome/Chromium is needed to render figures; {INSTALL}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path
