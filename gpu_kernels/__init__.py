"""Kernels: Triton implementations for CUDA and pure-torch references beside them."""
