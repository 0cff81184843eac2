"""The web service: RFC 8058 one-click unsubscribe links, the unsubscribe page, status and
Global Privacy Control, all feeding ``optout.requests`` through ``RequestPublisher``."""
