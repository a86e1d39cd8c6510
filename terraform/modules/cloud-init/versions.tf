terraform {
  # Only built-in functions: this module needs no provider at all.
  required_version = ">= 1.5.0"
}
