"""Adversarial tests: a real fleet attacked by hostile clients and a hostile origin."""
