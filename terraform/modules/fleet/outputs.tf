output "fleet_toml" {
  description = "The rendered fleet.toml, ready to write to disk and pass to every node with --config."
  value       = local.fleet_toml

  precondition {
    condition     = length(distinct(local.node_names)) == length(local.node_names)
    error_message = "Shield and edge names must be unique across both lists."
  }
  precondition {
    condition     = length(local.unknown_regions) == 0
    error_message = "Nodes and coverage zones refer to unknown regions: ${join(", ", tolist(local.unknown_regions))}."
  }
  precondition {
    condition     = length(local.unknown_services) == 0
    error_message = "Purge tokens refer to unknown services: ${join(", ", tolist(local.unknown_services))}."
  }
  precondition {
    condition     = length(local.duplicate_listens) == 0
    error_message = "Addresses used by more than one listener: ${join(", ", local.duplicate_listens)}."
  }
  precondition {
    condition     = var.geo == null ? true : (var.geo.default_region == null || contains(local.region_names, coalesce(var.geo.default_region, "-")))
    error_message = "geo.default_region must be the name of a region."
  }
}

output "edge_names" {
  description = "Edge node names, in the order given."
  value       = [for n in var.edges : n.name]
}

output "shield_names" {
  description = "Shield node names, in the order given."
  value       = [for n in var.shields : n.name]
}

output "edge_listen_addresses" {
  description = "Edge name => traffic listen address (host:port)."
  value       = { for n in var.edges : n.name => n.listen }
}

output "edge_admin_addresses" {
  description = "Edge name => admin listen address (host:port)."
  value       = { for n in var.edges : n.name => n.admin_listen }
}

output "edge_urls" {
  description = "Edge name => base URL of its traffic listener."
  value       = local.edge_urls
}

output "edge_public_addresses" {
  description = "Edge name => the IP address GeoDNS answers for it."
  value       = { for n in var.edges : n.name => coalesce(n.public_address, regex("^\\[?([^\\]]*?)\\]?:[0-9]+$", n.listen)[0]) }
}

output "edges_by_region" {
  description = "Region name => names of the edges in it."
  value       = { for r in var.regions : r.name => [for n in var.edges : n.name if n.region == r.name] }
}

output "shield_listen_addresses" {
  description = "Shield name => traffic listen address (host:port)."
  value       = { for n in var.shields : n.name => n.listen }
}

output "shield_admin_addresses" {
  description = "Shield name => admin listen address (host:port)."
  value       = { for n in var.shields : n.name => n.admin_listen }
}

output "purge_api_url" {
  description = "Base URL of the purge API, or null when there is none."
  value       = var.purge_api == null ? null : "http://${var.purge_api.listen}"
}

output "dns_listen" {
  description = "Address the GeoDNS server listens on (host:port), or null when there is no geo service."
  value       = var.geo == null ? null : var.geo.dns_listen
}

output "zone" {
  description = "The DNS zone GeoDNS is authoritative for, or null."
  value       = var.geo == null ? null : lower(trimsuffix(var.geo.zone, "."))
}

output "purge_api_urls" {
  description = "Base URLs of every purge API replica (one when it has no replicas), or [] when there is none."
  value       = var.purge_api == null ? [] : [for a in(length(coalesce(var.purge_api.replicas, [])) > 0 ? var.purge_api.replicas : [var.purge_api.listen]) : "http://${a}"]
}
