"""Plain-PyTorch references of the fused ops (float64 capable, autograd by torch)."""
