variable "regions" {
  description = "Places where nodes live: a name, coordinates (degrees) and the client networks (CIDRs) that belong to the region."
  type = list(object({
    name            = string
    latitude        = number
    longitude       = number
    client_networks = optional(list(string), [])
  }))

  validation {
    condition     = length(var.regions) > 0
    error_message = "At least one region is required."
  }
  validation {
    condition     = length(distinct([for r in var.regions : r.name])) == length(var.regions)
    error_message = "Region names must be unique."
  }
  validation {
    condition     = alltrue([for r in var.regions : r.latitude >= -90 && r.latitude <= 90 && r.longitude >= -180 && r.longitude <= 180])
    error_message = "Latitude must be within -90..90 and longitude within -180..180."
  }
  validation {
    condition     = alltrue(flatten([for r in var.regions : [for n in r.client_networks : can(cidrhost(n, 0))]]))
    error_message = "Every client network must be a CIDR such as 10.1.0.0/16."
  }
}

variable "services" {
  description = "Sites the CDN serves: the hosts it answers for and the origin URLs (http://host:port) behind them, with optional per-service tuning."
  type = list(object({
    name                        = string
    hosts                       = list(string)
    origins                     = list(string)
    negative_ttl                = optional(number)
    max_variants                = optional(number)
    default_stale_if_error      = optional(number)
    origin_fallback             = optional(bool)
    max_origin_connections      = optional(number)
    origin_queue                = optional(number)
    origin_queue_timeout        = optional(number)
    load_balancing              = optional(string)
    health_check_path           = optional(string)
    health_check_interval       = optional(number)
    connect_timeout             = optional(number)
    read_timeout                = optional(number)
    tls_cert                    = optional(string)
    tls_key                     = optional(string)
    https_redirect              = optional(bool)
    hsts_max_age                = optional(number)
    origin_ca                   = optional(string)
    origin_tls_verify           = optional(bool)
    durable_objects             = optional(bool)
    max_stale_when_unreachable  = optional(number)
    max_object_size             = optional(string)
    cache_close_delimited       = optional(bool)
    honor_request_cache_control = optional(bool)
    compress_min_size           = optional(number)
    early_hints                 = optional(bool)
    cache_key = optional(object({
      sort_query  = optional(bool)
      drop_params = optional(list(string))
    }))
  }))

  validation {
    condition     = length(distinct([for s in var.services : s.name])) == length(var.services)
    error_message = "Service names must be unique."
  }
  validation {
    condition     = alltrue([for s in var.services : length(s.hosts) > 0 && length(s.origins) > 0])
    error_message = "Every service needs at least one host and one origin."
  }
  validation {
    condition     = alltrue(flatten([for s in var.services : [for o in s.origins : can(regex("^https?://[^/\\s]+/?$", o))]]))
    error_message = "Origins must be URLs like http://host:port (no path)."
  }
  validation {
    condition     = alltrue([for s in var.services : s.load_balancing == null || contains(["round_robin", "least_outstanding"], coalesce(s.load_balancing, "round_robin"))])
    error_message = "load_balancing must be \"round_robin\" or \"least_outstanding\"."
  }
}

variable "shields" {
  description = "Shield nodes: name, region, listen and admin_listen (host:port), cache_dir, and cache_size as a size string such as \"1GiB\"."
  type = list(object({
    name         = string
    region       = string
    listen       = string
    admin_listen = string
    cache_dir    = string
    cache_size   = optional(string, "256MiB")
    memory_size  = optional(string)
    workers      = optional(number)
    tls_listen   = optional(string)
    tls_cert     = optional(string)
    tls_key      = optional(string)
  }))
  default = []

  validation {
    condition     = alltrue([for n in var.shields : can(regex("^(\\[[0-9a-fA-F:.]+\\]|[^:\\[\\]]+):[0-9]{1,5}$", n.listen)) && can(regex("^(\\[[0-9a-fA-F:.]+\\]|[^:\\[\\]]+):[0-9]{1,5}$", n.admin_listen))])
    error_message = "Shield listen and admin_listen must be host:port (IPv6 as [addr]:port)."
  }
  validation {
    condition     = alltrue([for n in var.shields : can(regex("^[0-9]+(\\.[0-9]+)?\\s*([KMGT]i?B|B)?$", n.cache_size))])
    error_message = "cache_size must be a size such as \"256MiB\", \"10GiB\" or \"500MB\"."
  }
}

variable "edges" {
  description = "Edge nodes: like shields, plus public_address (the IP GeoDNS answers with; default: the host of listen)."
  type = list(object({
    name           = string
    region         = string
    listen         = string
    admin_listen   = string
    cache_dir      = string
    cache_size     = optional(string, "256MiB")
    memory_size    = optional(string)
    workers        = optional(number)
    public_address = optional(string)
    tls_listen     = optional(string)
    tls_cert       = optional(string)
    tls_key        = optional(string)
  }))
  default = []

  validation {
    condition     = alltrue([for n in var.edges : can(regex("^(\\[[0-9a-fA-F:.]+\\]|[^:\\[\\]]+):[0-9]{1,5}$", n.listen)) && can(regex("^(\\[[0-9a-fA-F:.]+\\]|[^:\\[\\]]+):[0-9]{1,5}$", n.admin_listen))])
    error_message = "Edge listen and admin_listen must be host:port (IPv6 as [addr]:port)."
  }
  validation {
    condition     = alltrue([for n in var.edges : can(regex("^[0-9]+(\\.[0-9]+)?\\s*([KMGT]i?B|B)?$", n.cache_size))])
    error_message = "cache_size must be a size such as \"256MiB\", \"10GiB\" or \"500MB\"."
  }
}

variable "purge_api" {
  description = "The purge API: where it listens, where it keeps its durable log, and the tokens (SHA-256 hex of each token, never the token) with the services each may purge (\"*\" for all)."
  type = object({
    listen                = string
    data_dir              = string
    rate_limit_per_minute = optional(number)
    max_items             = optional(number)
    log                   = optional(string)
    replicas              = optional(list(string))
    tokens = optional(list(object({
      name     = string
      sha256   = string
      services = list(string)
    })), [])
  })
  default = null

  validation {
    condition     = var.purge_api == null ? true : alltrue([for t in var.purge_api.tokens : can(regex("^[0-9a-fA-F]{64}$", t.sha256))])
    error_message = "Every purge token sha256 must be 64 hex digits (the SHA-256 of the token)."
  }
  validation {
    condition     = var.purge_api == null ? true : contains(["sqlite", "jetstream"], coalesce(var.purge_api.log, "sqlite"))
    error_message = "purge_api.log must be \"sqlite\" or \"jetstream\"."
  }
}

variable "nats" {
  description = "The NATS JetStream cluster of a purge log with replicas (purge_api.log = \"jetstream\"): every server's nats:// URL, and optionally the stream, its replicas and the env var naming a credentials file. Null: no [nats] table."
  type = object({
    servers   = list(string)
    stream    = optional(string)
    replicas  = optional(number)
    creds_env = optional(string)
  })
  default = null

  validation {
    condition     = var.nats == null ? true : length(var.nats.servers) > 0 && alltrue([for s in var.nats.servers : can(regex("^(nats|tls)://[^\\s/]+:[0-9]{1,5}$", s))])
    error_message = "nats.servers must be one or more nats://host:port (or tls://) URLs."
  }
}

variable "geo" {
  description = "The GeoDNS service: DNS and HTTP listeners, the zone it is authoritative for, and optional tuning, coverage zones (network -> region overrides) and the zone's NS set (name servers with their glue addresses)."
  type = object({
    dns_listen      = string
    http_listen     = string
    zone            = string
    mmdb            = optional(string)
    ttl             = optional(number)
    answer_count    = optional(number)
    tie_distance_km = optional(number)
    default_region  = optional(string)
    health_interval = optional(number)
    coverage_zones = optional(list(object({
      network = string
      region  = string
    })), [])
    nameservers = optional(list(object({
      name      = string
      addresses = optional(list(string), [])
    })), [])
  })
  default = null

  validation {
    condition     = var.geo == null ? true : length(trimsuffix(trimspace(var.geo.zone), ".")) > 0
    error_message = "The geo zone must not be empty."
  }
}

variable "node_secret_env" {
  description = "Name of the environment variable that holds the shared node secret on every node."
  type        = string
  default     = "EDGESHIELD_NODE_SECRET"

  validation {
    condition     = can(regex("^[A-Za-z_][A-Za-z0-9_]*$", var.node_secret_env))
    error_message = "node_secret_env must be a valid environment variable name."
  }
}

variable "tls" {
  description = "The [security] TLS keys: node_ca (PEM path; set, edges reach shields over TLS verified against it), tls_min_version (\"1.2\" or \"1.3\") and alpn (protocols offered, preferred first). Null leaves the loader's defaults."
  type = object({
    node_ca         = optional(string)
    tls_min_version = optional(string)
    alpn            = optional(list(string))
  })
  default = null

  validation {
    condition     = var.tls == null ? true : contains(["1.2", "1.3"], coalesce(var.tls.tls_min_version, "1.2"))
    error_message = "tls_min_version must be \"1.2\" or \"1.3\"."
  }
}
