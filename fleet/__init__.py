"""The fleet file: its schema and loading, the floor every other package stands on."""
