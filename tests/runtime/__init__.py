"""Tests of the runtime package: plumbing every role shares."""
