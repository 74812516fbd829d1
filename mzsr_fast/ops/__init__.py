"""The fused ops, one module each (mzsr_fast.ops.<op>): the public functions,
their argument checks and backend choice, and every torch.library
registration of every backend (the Triton ops, fake kernels, autograd)."""
