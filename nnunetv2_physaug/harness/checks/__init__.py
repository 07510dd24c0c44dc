"""Offline checks behind ``scripts/check_*.py``: the signal equations against a Bloch simulation, the prior against the tissue table."""
