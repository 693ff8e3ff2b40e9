"""Tensor parallelism: the process group, its collectives, and the executor that drives one model
runner per rank (engine/distributed/executor.py)."""
