"""The torch module behind the demo's torch writers (``modelyard.demo.models``).

Private and imported only from inside those writers, so that the ONNX writers work without
torch. The class lives at module level because ``torch.jit.script`` reads its source.
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
