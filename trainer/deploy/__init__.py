"""Exported models: writing ONNX/TorchScript files, running them, checking their parity with
the checkpoint, int8 quantisation, and evaluating an exported file like a run.
"""
