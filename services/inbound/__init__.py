"""Inbound provider webhooks (``optout run inbound``): email providers' unsubscribes and
complaints, and SMS STOP/START replies, verified and published as OptOutRequested."""
