"""Tests of the documentation: its runnable commands, run as written."""
