"""tlsync: pull labelled images from labelling platforms and fine-tune detectors on them.

The core (this package) holds the common item-and-annotation format, the local dataset
store and the plugin system. Sources live in ``tlsync.connectors`` and the trainer in
``tlsync.trainer``; neither knows about the other.
"""

__version__ = "0.1.0"
