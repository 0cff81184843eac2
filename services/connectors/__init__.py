"""Connectors: one per destination system. ``kit`` turns "apply these commands to my
system" into a reliable consumer of ``optout.suppress.<destination>`` that
acknowledges on ``optout.acks``; ``registry`` names the connectors ``optout run``
knows."""
