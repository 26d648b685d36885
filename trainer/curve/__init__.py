"""``tlsync curve``: what more labels buy (nested subsets, their runs, the power-law fit and
its report).
"""
