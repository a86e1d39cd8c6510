# cloud-init user data for one fleet machine: installs edgeshield with pip into its
# own virtualenv, writes fleet.toml and the node secret, and runs the machine's role
# as a hardened systemd service that restarts on failure.

locals {
  service = var.role == "geo" ? "edgeshield-geo" : (var.role == "purge-api" ? "edgeshield-purge-api" : "edgeshield-${var.role}-${var.node_name}")

  arguments = {
    edge      = "edge --config /etc/edgeshield/fleet.toml --node ${var.node_name}"
    shield    = "shield --config /etc/edgeshield/fleet.toml --node ${var.node_name}"
    purge-api = "purge-api --config /etc/edgeshield/fleet.toml"
    geo       = "geo serve --config /etc/edgeshield/fleet.toml"
  }

  user_data = templatefile("${path.module}/cloud-init.yaml.tftpl", {
    service        = local.service
    exec_start     = "/opt/edgeshield/bin/edgeshield ${local.arguments[var.role]}"
    role           = var.role
    package        = var.package
    fleet_toml_b64 = base64encode(var.fleet_toml)
    secret_env_b64 = base64encode("${var.node_secret_env}=${var.node_secret}\n")
    mmdb_url       = var.mmdb_url
    mmdb_path      = var.mmdb_path
    tls_cert_b64   = base64encode(var.tls_cert_pem)
    tls_key_b64    = base64encode(var.tls_key_pem)
  })
}
