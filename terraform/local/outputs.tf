output "edge_urls" {
  description = "Edge name => base URL (each region's edges on their own loopback address)."
  value       = module.fleet.edge_urls
}

output "purge_api_url" {
  description = "Base URL of the purge API (POST /v1/services/<service>/purge with the purge token)."
  value       = module.fleet.purge_api_url
}

output "dns_address" {
  description = "host:port of the GeoDNS server (UDP and TCP)."
  value       = module.fleet.dns_listen
}

output "demo_host" {
  description = "The Host header to send to an edge for the demo origin's service."
  value       = var.demo_host
}

output "service" {
  description = "Name of the demo service (for purges)."
  value       = local.service
}

output "zone" {
  description = "The DNS zone GeoDNS answers for."
  value       = module.fleet.zone
}

output "edge_public_addresses" {
  description = "Edge name => the address GeoDNS answers for it."
  value       = module.fleet.edge_public_addresses
}

output "fleet_file" {
  description = "Path of the rendered fleet.toml (use it with `edgeshield check --config`)."
  value       = local.fleet_file
}

output "state_dir" {
  description = "Directory holding caches, logs (logs/) and PID files (pids/)."
  value       = local.state_dir
}

output "pid_files" {
  description = "Node name => PID file of its background process."
  value = merge(
    { origin = terraform_data.origin.input.pid_file, purge-api = terraform_data.purge_api.input.pid_file, geo = terraform_data.geo.input.pid_file },
    { for k, v in terraform_data.shield : k => v.input.pid_file },
    { for k, v in terraform_data.edge : k => v.input.pid_file },
    { for k, v in terraform_data.nats : k => v.input.pid_file },
    { for k, v in terraform_data.purge_api_replica : k => v.input.pid_file },
  )
}

output "edge_https_urls" {
  description = "Edge name => HTTPS base URL (with var.tls; send SNI and Host demo_host, e.g. curl --cacert ca_file --resolve)."
  value       = { for e in local.edges : e.name => "https://${e.tls_listen}" if e.tls_listen != null }
}

output "ca_file" {
  description = "The throwaway CA that signed the local fleet's certificate (with var.tls), for curl --cacert."
  value       = var.tls ? "${local.tls_dir}/ca.pem" : null
}

output "purge_api_urls" {
  description = "Base URLs of every purge API replica (one with the sqlite log)."
  value       = module.fleet.purge_api_urls
}

output "nats_servers" {
  description = "nats:// URLs of the local NATS cluster ([] with the sqlite log)."
  value       = [for n in local.nats : "nats://127.0.0.1:${n.port}"]
}
