"""Tests of the command line and `edgeshield up`."""
