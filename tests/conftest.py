"""Shared test settings: one torch thread (as the service runs) and a fixed seed per test."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)

METHODS = ["none", "layer", "streaming", "online", "recurrent_batch", "batch_rnn", "weight",
           "cosine"]
CELLS = ["lstm", "gru", "rnn"]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(1234)
