"""Training on several processes: the launcher that starts them, the per-rank runtime and the
DDP wrapper (NCCL on CUDA, gloo on CPU).
"""
