"""Tests of the fleet package: the fleet file's schema and validation."""
