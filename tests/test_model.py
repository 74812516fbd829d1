"""MZSRNet and its functional form (docs/method.md section 5)."""
import torch

import mzsr_fast
from mzsr_fast.model import PARAMETER_NAMES


def test_parameter_count_and_names():
    net = mzsr_fast.MZSRNet()
    assert sum(p.numel() for p in net.parameters()) == 225_091
    assert tuple(name for name, _ in net.named_parameters()) == PARAMETER_NAMES
    shapes = [tuple(p.shape) for p in net.parameters()]
    assert shapes[0] == (64, 3, 3, 3) and shapes[-2] == (3, 64, 3, 3) and shapes[-1] == (3,)


def test_reference_initialisation():
    net = mzsr_fast.MZSRNet()
    net.reset_parameters(torch.Generator().manual_seed(0))
    for conv in net.layers:
        fan_in = conv.weight[0].numel()
        assert torch.equal(conv.bias, torch.zeros_like(conv.bias))
        assert conv.weight.abs().max() <= 2 * (1 / fan_in) ** 0.5 / 0.87962566103423978 + 1e-6
    big = net.layers[3].weight
    assert abs(big.var().item() * big[0].numel() - 1) < 0.05  # variance scaling: var = 1 / fan_in


def test_functional_forward_equals_module_and_is_residual():
    net = mzsr_fast.MZSRNet().double()
    x = torch.rand(2, 3, 11, 13, dtype=torch.float64)
    out = net(x)
    torch.testing.assert_close(mzsr_fast.functional_forward(dict(net.named_parameters()), x), out)
    assert out.shape == x.shape
    with torch.no_grad():
        net.layers[-1].weight.zero_()
        net.layers[-1].bias.zero_()
    torch.testing.assert_close(net(x), x)


def test_functional_forward_second_order():
    net = mzsr_fast.MZSRNet().double()
    params = dict(net.named_parameters())
    x = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    loss = mzsr_fast.functional_forward(params, x).abs().mean()
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    adapted = {n: p - 0.01 * g for (n, p), g in zip(params.items(), grads)}
    meta = mzsr_fast.functional_forward(adapted, x).abs().mean()
    meta.backward()
    assert all(p.grad is not None for p in net.parameters())
