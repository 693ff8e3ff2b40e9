"""Speculative decoding: proposers, the rejection sampler and their engine hooks."""
