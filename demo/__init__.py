"""The demo origin: the website behind the demo fleet, and the origin of tests and benches."""
