"""A CPU emulation of how CUDA kernels divide, for tests of device-independent numerics."""

from __future__ import annotations

import torch

__all__ = ["CudaScalarDivision"]


class CudaScalarDivision(torch.overrides.TorchFunctionMode):
    """Divides a tensor by a Python number the way CUDA's ``div_true`` kernel does on a GPU.

    For a CPU-scalar divisor that kernel computes ``a * (1 / b)``, the reciprocal rounded in
    the tensor's dtype, instead of ``a / b`` (the CPU kernel). This mode does the same on the
    CPU, so the device-dependent rounding that made GPU scales differ is testable here.
    """

    DIVISIONS = (torch.Tensor.__truediv__, torch.Tensor.div, torch.div, torch.true_divide)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (func in self.DIVISIONS and len(args) == 2 and not kwargs
                and isinstance(args[1], (int, float)) and args[0].is_floating_point()):
            x, b = args
            one, divisor = torch.ones((), dtype=x.dtype), torch.tensor(b, dtype=x.dtype)
            self.calls += 1
            return x * (one / divisor)
        return func(*args, **kwargs)

    def __enter__(self):
        self.calls = 0
        return super().__enter__()
