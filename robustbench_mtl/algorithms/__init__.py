"""Algorithms: one module per registered name (see base.py for the contract)."""
