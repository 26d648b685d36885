"""``tlsync audit``: which labels are probably wrong, from the user's own model, ranked for review.

``folds`` builds the K folds, ``run`` trains and predicts them (resumable), ``scores`` and
``review`` turn labels and out-of-sample predictions into ranked suspects (ObjectLab's scores,
see docs/audit.md), ``output`` writes the folder, ``audit`` ties them together.
"""
