"""Local stand-ins of the destination systems, so the pipeline runs end to end on one
machine (``optout run standins``) and integration tests have real HTTP peers:
``email_provider_api`` (an ESP's global-unsubscribe API) and ``partners_api`` (third
parties' "do not sell/share" endpoints). ``web`` is their tiny HTTP plumbing,
``server.run`` serves both."""
