"""The fleet: the fleet file's schema and loading, the CLI, and `edgeshield up`."""
