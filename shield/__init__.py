"""The shield role: the caching engine with the origin pool as its upstream."""
