"""The torch modules behind the torch builders of ``modelyard.testing.models``.

Private and imported only from inside those builders, so that the ONNX builders work without
torch. The classes live at module level because ``torch.jit.script`` reads their source.
"""

from __future__ import annotations

import torch

from modelyard.demo._torch_models import Mlp as Mlp  # moved to the demo; kept importable here


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
