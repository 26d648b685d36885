"""The training loop: settings (``TrainConfig``), ``fit``, the per-step engine, data loading,
checkpoints, run folders, precise batch-norm statistics, the CPU RoIAlign backward and the
plugins' training callbacks. Read ``fit.py`` first: the loop fits on one screen.
"""
