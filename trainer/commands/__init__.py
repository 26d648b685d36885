"""The trainer's click commands, in one place: ``tlsync.cli.LAZY_COMMANDS`` names each by
``module:attribute`` so ``tlsync --help`` lists them without importing torch.

Each command is thin: it turns options into a settings object and calls its capability's package.
"""
