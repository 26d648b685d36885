"""Experiment trackers (``--log tensorboard,mlflow``), built in through the same callbacks hook
as a plugin's.
"""
