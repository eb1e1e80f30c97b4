"""Triton kernels of qkernels, one module per op family. Installed as ``qkernels.triton_kernels`` (the
top-level name ``triton_kernels`` belongs to another distribution); importing this package imports triton."""
