"""Tests of the fleet package: the fleet file, the demo origin, and `edgeshield up`."""
