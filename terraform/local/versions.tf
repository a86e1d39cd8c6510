terraform {
  # terraform_data and local-exec are built in: nothing to download.
  required_version = ">= 1.5.0"
}
