"""Observability for SREs: consumer lag (messages, seconds, Burrow-style status), health
endpoints, business metrics and the exporter."""
