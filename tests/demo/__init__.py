"""Tests of the demo origin."""
