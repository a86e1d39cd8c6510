"""The purge API: tokens, the durable purge log, fan-out to nodes, and the CI client."""
