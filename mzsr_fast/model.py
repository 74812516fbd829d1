"""The MZSR network (docs/method.md section 5) and its functional form.

Eight 3x3 convolutions (3 -> 64, six times 64 -> 64, 64 -> 3), zero 'same'
padding, bias everywhere, ReLU after the first seven, global residual:
f(x) = x + net(x). 225,091 parameters, named "layers.{i}.weight" [out, in, 3, 3]
and "layers.{i}.bias" [out] for i = 0..7.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["MZSRNet", "functional_forward", "state_dict_mismatch", "PARAMETER_NAMES", "CHANNELS"]

CHANNELS = (3, 64, 64, 64, 64, 64, 64, 64, 3)  # in/out channels of the 8 layers
PARAMETER_NAMES = tuple(f"layers.{i}.{kind}" for i in range(len(CHANNELS) - 1) for kind in ("weight", "bias"))

# TensorFlow's truncated-normal variance scaling divides the std by this, the
# std of a unit normal truncated at +-2, so the kept samples have variance 1/fan_in.
_TRUNCATED_STD = 0.87962566103423978


def functional_forward(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Run the network with an explicit parameter dict (names as PARAMETER_NAMES).

    x: [B, 3, H, W] -> [B, 3, H, W]. Differentiable with respect to params, to
    any order, which is what MAML and the test-time adapter need.
    """
    h = x
    last = len(CHANNELS) - 2
    for i in range(last + 1):
        h = F.conv2d(h, params[f"layers.{i}.weight"], params[f"layers.{i}.bias"], padding=1)
        if i < last:
            h = F.relu(h)
    return x + h


def state_dict_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """Why state does not fit model's load_state_dict, in a few words naming the
    first tensor that does not fit (missing, of another shape, or unknown to
    the model), or None when every tensor fits."""
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            return f"{name} is missing"
        if state[name].shape != tensor.shape:
            return f"{name} has shape {list(state[name].shape)}, expected {list(tensor.shape)}"
    unknown = sorted(name for name in state if name not in expected)
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        return f"{unknown[0]} is not a tensor of {type(model).__name__}{more}"
    return None


class MZSRNet(nn.Module):
    """The MZSR super-resolution network. forward: [B, 3, H, W] -> [B, 3, H, W]
    (the input is the bicubically upsampled LR image; output not clipped).

    initialise: draw the reference initialisation (reset_parameters); False
    for a network whose weights are loaded next (the truncated-normal draw
    costs about half a second on a CPU).
    """

    def __init__(self, initialise: bool = True):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Conv2d(c_in, c_out, 3, padding=1) for c_in, c_out in zip(CHANNELS[:-1], CHANNELS[1:]))
        if initialise:
            self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """The reference initialisation: variance scaling (fan-in, scale 1,
        truncated normal) for weights, zeros for biases."""
        with torch.no_grad():
            for conv in self.layers:
                fan_in = conv.weight.shape[1] * conv.weight.shape[2] * conv.weight.shape[3]
                std = math.sqrt(1.0 / fan_in) / _TRUNCATED_STD
                nn.init.trunc_normal_(conv.weight, 0.0, std, -2 * std, 2 * std, generator=generator)
                conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional_forward(dict(self.named_parameters()), x)
