"""Reconciliation: read a destination's suppression list back and compare it with our state."""
