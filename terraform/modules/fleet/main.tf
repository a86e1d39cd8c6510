# Renders fleet.toml from typed variables with built-in functions only.
#
# Every table is a list of [key, value] pairs; pairs whose value is null are left
# out so the loader's own defaults apply. Values go through jsonencode(): a JSON
# string, number, boolean or array of strings is also valid TOML, with the same
# escapes, so no value can break out of its line.

locals {
  region_names = [for r in var.regions : r.name]

  region_tables = [for r in var.regions : [
    ["name", r.name],
    ["latitude", r.latitude],
    ["longitude", r.longitude],
    ["client_networks", r.client_networks],
  ]]

  service_tables = [for s in var.services : [
    ["name", s.name],
    ["hosts", s.hosts],
    ["origins", s.origins],
    ["negative_ttl", s.negative_ttl],
    ["max_variants", s.max_variants],
    ["default_stale_if_error", s.default_stale_if_error],
    ["origin_fallback", s.origin_fallback],
    ["max_origin_connections", s.max_origin_connections],
    ["origin_queue", s.origin_queue],
    ["origin_queue_timeout", s.origin_queue_timeout],
    ["load_balancing", s.load_balancing],
    ["health_check_path", s.health_check_path],
    ["health_check_interval", s.health_check_interval],
    ["connect_timeout", s.connect_timeout],
    ["read_timeout", s.read_timeout],
    ["tls_cert", s.tls_cert],
    ["tls_key", s.tls_key],
    ["https_redirect", s.https_redirect],
    ["hsts_max_age", s.hsts_max_age],
    ["origin_ca", s.origin_ca],
    ["origin_tls_verify", s.origin_tls_verify],
    ["durable_objects", s.durable_objects],
    ["max_stale_when_unreachable", s.max_stale_when_unreachable],
    ["max_object_size", s.max_object_size],
    ["cache_close_delimited", s.cache_close_delimited],
    ["honor_request_cache_control", s.honor_request_cache_control],
    ["compress_min_size", s.compress_min_size],
    ["early_hints", s.early_hints],
  ]]

  service_cache_keys = [for s in var.services : s.cache_key == null ? null : [
    ["sort_query", s.cache_key.sort_query],
    ["drop_params", s.cache_key.drop_params],
  ]]

  shield_tables = [for n in var.shields : [
    ["name", n.name],
    ["region", n.region],
    ["listen", n.listen],
    ["admin_listen", n.admin_listen],
    ["cache_dir", n.cache_dir],
    ["cache_size", n.cache_size],
    ["memory_size", n.memory_size],
    ["workers", n.workers],
    ["tls_listen", n.tls_listen],
    ["tls_cert", n.tls_cert],
    ["tls_key", n.tls_key],
  ]]

  edge_tables = [for n in var.edges : [
    ["name", n.name],
    ["region", n.region],
    ["listen", n.listen],
    ["admin_listen", n.admin_listen],
    ["cache_dir", n.cache_dir],
    ["cache_size", n.cache_size],
    ["memory_size", n.memory_size],
    ["workers", n.workers],
    ["public_address", n.public_address],
    ["tls_listen", n.tls_listen],
    ["tls_cert", n.tls_cert],
    ["tls_key", n.tls_key],
  ]]

  security_tls = var.tls == null ? [] : [
    for kv in [
      ["node_ca", var.tls.node_ca],
      ["tls_min_version", var.tls.tls_min_version],
      ["alpn", var.tls.alpn],
    ] : "${kv[0]} = ${jsonencode(kv[1])}" if kv[1] != null
  ]

  purge_api_table = var.purge_api == null ? null : [
    # one address, or every replica's when there are several (a JetStream log)
    ["listen", jsondecode(length(coalesce(var.purge_api.replicas, [])) > 0 ? jsonencode(var.purge_api.replicas) : jsonencode(var.purge_api.listen))],
    ["data_dir", var.purge_api.data_dir],
    ["rate_limit_per_minute", var.purge_api.rate_limit_per_minute],
    ["max_items", var.purge_api.max_items],
    ["log", var.purge_api.log],
  ]

  nats_table = var.nats == null ? null : [
    ["servers", var.nats.servers],
    ["stream", var.nats.stream],
    ["replicas", var.nats.replicas],
    ["creds_env", var.nats.creds_env],
  ]

  purge_token_tables = var.purge_api == null ? [] : [for t in var.purge_api.tokens : [
    ["name", t.name],
    ["sha256", lower(t.sha256)],
    ["services", t.services],
  ]]

  geo_table = var.geo == null ? null : [
    ["dns_listen", var.geo.dns_listen],
    ["http_listen", var.geo.http_listen],
    ["zone", var.geo.zone],
    ["mmdb", var.geo.mmdb],
    ["ttl", var.geo.ttl],
    ["answer_count", var.geo.answer_count],
    ["tie_distance_km", var.geo.tie_distance_km],
    ["default_region", var.geo.default_region],
    ["health_interval", var.geo.health_interval],
  ]

  coverage_zone_tables = var.geo == null ? [] : [for z in var.geo.coverage_zones : [
    ["network", z.network],
    ["region", z.region],
  ]]

  nameserver_tables = var.geo == null ? [] : [for ns in var.geo.nameservers : [
    ["name", ns.name],
    ["addresses", ns.addresses],
  ]]

  # One block of text per table: the header line, then `key = value` lines.
  blocks = concat(
    ["# Rendered by terraform/modules/fleet; edit the Terraform variables, not this file."],
    [for t in local.region_tables : join("\n", concat(["[[regions]]"], [for kv in t : "${kv[0]} = ${jsonencode(kv[1])}" if kv[1] != null]))],
    flatten([for i, t in local.service_tables : concat(
      [join("\n", concat(["[[services]]"], [for kv in t : "${kv[0]} = ${jsonencode(kv[1])}" if kv[1] != null]))],
      local.service_cache_keys[i] == null ? [] : [join("\n", concat(["[services.cache_key]"], [for kv in local.service_cache_keys[i] : "${kv[0]} = ${jsonencode(kv[1])}" if kv[1] != null]))],
    )]),
    [for t in local.shield_tables : join("\n", concat(["[[shields]]"], [for kv in t : "${kv[0]} = ${jsonencode(kv[1])}" if kv[1] != null]))],
    [for t in local.edge_tables : join("\n", concat(["[[edges]]"], [for kv in t : "${kv[0]} = ${jsonencode(kv[1])}" if kv[1] != null]))],
    local.purge_api_table == null ? [] : concat(
      [join("\n", concat(["[purge_api]"], [for kv in local.purge_api_table : "${kv[0]} = ${jsonencode(kv[1])}" if kv[1] != null]))],
      [for t in local.purge_token_tables : join("\n", concat(["[[purge_api.tokens]]"], [for kv in t : "${kv[0]} = ${jsonencode(kv[1])}"]))],
    ),
    local.geo_table == null ? [] : concat(
      [join("\n", concat(["[geo]"], [for kv in local.geo_table : "${kv[0]} = ${jsonencode(kv[1])}" if kv[1] != null]))],
      [for t in local.coverage_zone_tables : join("\n", concat(["[[geo.coverage_zones]]"], [for kv in t : "${kv[0]} = ${jsonencode(kv[1])}"]))],
      [for t in local.nameserver_tables : join("\n", concat(["[[geo.nameservers]]"], [for kv in t : "${kv[0]} = ${jsonencode(kv[1])}"]))],
    ),
    local.nats_table == null ? [] : [join("\n", concat(["[nats]"], [for kv in local.nats_table : "${kv[0]} = ${jsonencode(kv[1])}" if kv[1] != null]))],
    [join("\n", concat(["[security]", "node_secret_env = ${jsonencode(var.node_secret_env)}"], local.security_tls))],
  )

  fleet_toml = "${join("\n\n", local.blocks)}\n"

  # Cross-references the loader also checks; caught here so `plan` fails early.
  node_names        = concat([for n in var.shields : n.name], [for n in var.edges : n.name])
  service_names     = [for s in var.services : s.name]
  unknown_regions   = setsubtract(concat([for n in var.shields : n.region], [for n in var.edges : n.region], var.geo == null ? [] : [for z in var.geo.coverage_zones : z.region]), local.region_names)
  unknown_services  = var.purge_api == null ? [] : setsubtract(flatten([for t in var.purge_api.tokens : t.services]), concat(local.service_names, ["*"]))
  node_listens      = flatten([for n in concat(var.shields, var.edges) : [n.listen, n.admin_listen]])
  duplicate_listens = [for a in distinct(local.node_listens) : a if length([for b in local.node_listens : b if b == a]) > 1 && !endswith(a, ":0")]

  edge_urls = { for n in var.edges : n.name => "http://${n.listen}" }
}
