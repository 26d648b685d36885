"""Errors a user sees: one line, naming the file, item or field at fault.

The CLI prints ``TlsyncError`` messages without a traceback (``--debug`` shows it), so
every raise site is responsible for a message that stands on its own.
"""


class TlsyncError(Exception):
    """A problem the user can fix; the message is shown as is."""


class InvalidItem(TlsyncError):
    """An item or one of its boxes breaks the common format."""


class SourceError(TlsyncError):
    """A source could not read its input (bad file, bad response, missing image)."""


class PluginError(TlsyncError):
    """A plugin is broken or misbehaves; the message names the plugin."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch scheduler's stop, ``docker stop``), met as Ctrl-C is met.

    Python's default for SIGTERM ends the process on the spot: no temp file removed, no
    "stopped: ... --resume continues" line from a training run. Raised from the ``tlsync``
    program's handler, it unwinds through every ``finally`` and ``except KeyboardInterrupt``.
    """
