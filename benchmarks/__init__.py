"""Benchmarks that run against the real Kafka broker and PostgreSQL server (``make bench-*``)."""
