"""The caching engine and the edge role."""
