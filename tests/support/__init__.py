"""Shared test support: free ports, fleet files, and real node processes."""
