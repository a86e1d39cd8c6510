output "edge_addresses" {
  description = "Edge name => public IPv4 address (what GeoDNS answers)."
  value       = { for name, n in local.nodes : name => local.public_ip[name] if n.role == "edge" }
}

output "edge_urls" {
  description = "Edge name => http URL on its public address (send the service's Host header)."
  value       = { for name, n in local.nodes : name => "http://${local.public_ip[name]}" if n.role == "edge" }
}

output "private_addresses" {
  description = "Node name => private address inside the fleet."
  value       = local.private_ip
}

output "purge_api_url" {
  description = "Public URL of the purge API (reachable from purge_api_cidrs and the fleet only)."
  value       = "http://${local.public_ip["purge-api"]}:${local.ports.purge_api}"
}

output "nameserver" {
  description = "The name the GeoDNS nodes answer as (NS of the zone)."
  value       = "ns1.${lower(trimsuffix(var.zone, "."))}"
}

output "geo_addresses" {
  description = "GeoDNS node name => public IPv4 address."
  value       = { for name, n in local.nodes : name => local.public_ip[name] if n.role == "geo" }
}

output "delegation_records" {
  description = "Records to add in the parent zone to delegate the CDN zone to GeoDNS: the NS record and its glue (A records for the name server, one per GeoDNS node)."
  value = {
    ns = {
      name    = "${lower(trimsuffix(var.zone, "."))}."
      type    = "NS"
      records = ["ns1.${lower(trimsuffix(var.zone, "."))}."]
    }
    glue = {
      name    = "ns1.${lower(trimsuffix(var.zone, "."))}."
      type    = "A"
      records = sort([for name, n in local.nodes : local.public_ip[name] if n.role == "geo"])
    }
  }
}

output "delegation_zone_file" {
  description = "The same delegation as zone-file lines, for a parent zone you edit by hand."
  value = join("\n", concat(
    ["${lower(trimsuffix(var.zone, "."))}. 3600 IN NS ns1.${lower(trimsuffix(var.zone, "."))}."],
    [for name, n in local.nodes : "ns1.${lower(trimsuffix(var.zone, "."))}. 3600 IN A ${local.public_ip[name]}" if n.role == "geo"],
  ))
}

output "service_names" {
  description = "Service => the name in the CDN zone to CNAME the service's hosts to."
  value       = { for s in var.services : s.name => "${s.name}.${lower(trimsuffix(var.zone, "."))}" }
}

output "fleet_toml" {
  description = "The fleet.toml every machine runs with (it holds token hashes, never tokens or the node secret)."
  value       = module.fleet.fleet_toml
}

output "purge_api_urls" {
  description = "Public URLs of every purge API replica (one with the sqlite log): put a load balancer or a DNS name in front of them for CI."
  value       = [for name, n in local.nodes : "http://${local.public_ip[name]}:${local.ports.purge_api}" if n.role == "purge-api"]
}

output "nats_servers" {
  description = "The NATS servers of the purge log ([] with the sqlite log)."
  value       = local.jetstream ? local.nats_servers : []
}
