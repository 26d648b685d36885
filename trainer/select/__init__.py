"""``tlsync select``: which unlabelled images to label next (scoring a pool, the strategies,
writing the selection).
"""
