"""Triton kernels of unimask, shipped inside the wheel as ``unimask.kernels``."""
