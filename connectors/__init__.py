"""The built-in sources, each a pluggy plugin written exactly like a third-party one."""
