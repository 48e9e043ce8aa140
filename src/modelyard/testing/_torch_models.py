"""The torch modules behind the torch builders of ``modelyard.testing.models``.

Private and imported only from inside those builders, so that the ONNX builders work without
torch. The classes live at module level because ``torch.jit.script`` reads their source.
"""

from __future__ import annotations

import numpy as np
import torch


class Mlp(torch.nn.Module):
    """``relu(x @ w1.T + b1) @ w2.T + b2``, with weights given as numpy arrays."""

    def __init__(self, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(w1.shape[1], w1.shape[0])
        self.out = torch.nn.Linear(w2.shape[1], w2.shape[0])
        with torch.no_grad():
            self.hidden.weight.copy_(torch.from_numpy(w1))
            self.hidden.bias.copy_(torch.from_numpy(b1))
            self.out.weight.copy_(torch.from_numpy(w2))
            self.out.bias.copy_(torch.from_numpy(b2))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.out(torch.relu(self.hidden(x)))
        return result


class SumProduct(torch.nn.Module):
    """Two inputs, two outputs: ``(a + b, a * b)``."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a + b, a * b


class Loop(torch.nn.Module):
    """``x`` halved towards 2, ``n`` times: ``y = 2 + (x - 2) * 0.5**n``. The loop's length is
    an input, so a request chooses how long the model runs (two tensor ops per turn)."""

    def forward(self, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        y = x
        for _ in range(int(n.max())):
            y = y * 0.5 + 1.0
        return y
