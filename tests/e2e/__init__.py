"""End-to-end tests: real edge, shield and origin processes on loopback."""
