"""Fused, differentiable ops, each in its own module with backend choice,
argument checks and autograd registration."""
