"""I/O-free HTTP caching policy (RFC 9111 and friends): values in, decisions out."""
