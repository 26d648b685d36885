"""Scoring a model: predictions, COCO-style metrics, the evaluation of a split, run comparison,
the HTML report with its plots, drawing boxes on images, and the forgetting check.
"""
