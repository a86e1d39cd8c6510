# cloud-init user data for one fleet machine: installs edgeshield with pip into its
# own virtualenv, writes fleet.toml and the node secret, and runs the machine's role
# as a hardened systemd service that restarts on failure.

locals {
  service = var.role == "geo" ? "edgeshield-geo" : (var.role == "purge-api" ? "edgeshield-purge-api" : "edgeshield-${var.role}-${var.node_name}")

  arguments = {
    edge      = "edge --config /etc/edgeshield/fleet.toml --node ${var.node_name}"
    shield    = "shield --config /etc/edgeshield/fleet.toml --node ${var.node_name}"
    purge-api = "purge-api --config /etc/edgeshield/fleet.toml${var.listen != "" ? " --listen ${var.listen}" : ""}"
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
    nats           = var.nats
    nats_exec = var.nats == null ? "" : join(" ", concat(
      ["/usr/bin/nats-server", "-js", "-a", var.nats.address, "-p", "4222", "-sd", "/var/lib/nats", "-n", var.nats.name],
      length(var.nats.routes) == 0 ? [] : ["--cluster_name", "edgeshield", "--cluster", "nats://${var.nats.address}:6222", "--routes", join(",", var.nats.routes)],
    ))
  })
}
