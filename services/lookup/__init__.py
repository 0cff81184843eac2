"""The suppression lookup API (``optout run lookup``): "is this person suppressed?"."""
