"""The confirmation worker: records acks, confirms completed requests, sweeps deadlines."""
