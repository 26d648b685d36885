"""The detectors tlsync can train: the model registry (``zoo``), head replacement, pretrained
weight files, and EfficientNet-Lite0's FPN backbone.
"""
