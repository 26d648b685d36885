"""The shared trainer: datasets in the common format -> torch, models, the loop, evaluation, reports."""
