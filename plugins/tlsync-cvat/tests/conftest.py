# tlsync's fixtures: tlsync_home, tlsync_store, tlsync_plugins, run_cli, loopback_server.
pytest_plugins = ["tlsync.testing.fixtures"]
