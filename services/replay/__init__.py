"""Replaying the active suppressions to a new or restored destination (``optout replay``)."""
