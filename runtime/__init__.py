"""Process and HTTP-server plumbing that every role shares (not configuration, not a role)."""
