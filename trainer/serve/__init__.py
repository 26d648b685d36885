"""``tlsync serve``: a run (or an exported model) as a Label Studio ML backend.

Label Studio asks a backend for pre-labels over HTTP (its ``ml/api_connector.py``: ``GET /health``,
``POST /setup``, ``POST /predict``, ``POST /webhook``, ``GET /versions``). ``labelconfig`` checks a
project's labelling config against the run's classes, ``images`` fetches a task's image as a pull
would (bounded, complete, the key only for Label Studio's own ``/data/``), ``batcher`` runs the
model on images from concurrent requests together, and ``server`` speaks the protocol.
"""
