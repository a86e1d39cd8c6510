variable "python" {
  description = "The Python interpreter that has edgeshield installed (it runs every node and the node helper script)."
  type        = string
  default     = "python3"
}

variable "state_dir" {
  description = "Directory for the fleet file, caches, the purge log, PID files and logs. Empty: a `run` directory beside this module."
  type        = string
  default     = ""
}

variable "node_secret" {
  description = "The shared node secret that guards admin endpoints; handed to every node in the environment variable named by node_secret_env."
  type        = string
  sensitive   = true

  validation {
    condition     = length(var.node_secret) >= 16
    error_message = "The node secret must be at least 16 characters long."
  }
}

variable "node_secret_env" {
  description = "Name of the environment variable that carries the node secret."
  type        = string
  default     = "EDGESHIELD_NODE_SECRET"
}

variable "purge_token_sha256" {
  description = "SHA-256 (hex) of the purge token allowed to purge the demo service; make one with `edgeshield purge-api hash-token`."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-fA-F]{64}$", var.purge_token_sha256))
    error_message = "purge_token_sha256 must be 64 hex digits."
  }
}

variable "regions" {
  description = "Simulated regions: coordinates, client networks, and the loopback address each region's edges listen on (so GeoDNS answers differ by region)."
  type = list(object({
    name            = string
    latitude        = number
    longitude       = number
    client_networks = list(string)
    edge_address    = string
  }))
  default = [
    { name = "eu-west", latitude = 50.11, longitude = 8.68, client_networks = ["198.51.100.0/24"], edge_address = "127.0.1.1" },
    { name = "us-east", latitude = 40.71, longitude = -74.01, client_networks = ["203.0.113.0/24"], edge_address = "127.0.2.1" },
    { name = "ap-northeast", latitude = 35.68, longitude = 139.69, client_networks = ["192.0.2.0/24"], edge_address = "127.0.3.1" },
  ]

  validation {
    condition     = length(var.regions) > 0 && length(distinct([for r in var.regions : r.edge_address])) == length(var.regions)
    error_message = "At least one region, and each region needs its own edge_address."
  }
  validation {
    condition     = alltrue([for r in var.regions : can(regex("^127\\.[0-9]+\\.[0-9]+\\.[0-9]+$", r.edge_address))])
    error_message = "A local fleet listens on loopback only: edge_address must be in 127.0.0.0/8."
  }
}

variable "edges_per_region" {
  description = "How many edges each region gets (they share the region's address on consecutive port pairs)."
  type        = number
  default     = 1

  validation {
    condition     = var.edges_per_region >= 1 && var.edges_per_region <= 8 && floor(var.edges_per_region) == var.edges_per_region
    error_message = "edges_per_region must be a whole number from 1 to 8."
  }
}

variable "shield_count" {
  description = "How many shields (on 127.0.0.1), placed in the regions in turn."
  type        = number
  default     = 2

  validation {
    condition     = var.shield_count >= 0 && var.shield_count <= 8 && floor(var.shield_count) == var.shield_count
    error_message = "shield_count must be a whole number from 0 to 8."
  }
}

variable "ports" {
  description = "Ports of the local fleet. Edges use edge and edge_admin on their region's address (+2 per extra edge); shield i uses shield + 2i and shield + 2i + 1; purge API replica i (jetstream) uses purge_api + i; NATS server i uses nats + 2i (clients) and nats + 2i + 1 (cluster routes); the rest listen on 127.0.0.1."
  type = object({
    edge       = optional(number, 47080)
    edge_admin = optional(number, 47081)
    shield     = optional(number, 47100)
    purge_api  = optional(number, 47200)
    dns        = optional(number, 47053)
    geo_http   = optional(number, 47054)
    origin     = optional(number, 47300)
    edge_tls   = optional(number, 47443)
    shield_tls = optional(number, 47150)
    nats       = optional(number, 47400)
  })
  default = {}

  validation {
    condition     = alltrue([for p in values(var.ports) : p >= 1024 && p <= 65535])
    error_message = "Ports must be from 1024 to 65535 (no root needed)."
  }
}

variable "service" {
  description = "Name of the demo origin's service (purge it at /v1/services/<service>/purge; GeoDNS answers <service>.<zone>)."
  type        = string
  default     = "www"
}

variable "demo_host" {
  description = "The Host the demo origin's service answers for (send it with requests to an edge)."
  type        = string
  default     = "www.demo.test"
}

variable "zone" {
  description = "The DNS zone the local GeoDNS server is authoritative for."
  type        = string
  default     = "cdn.demo.test"
}

variable "cache_size" {
  description = "Disk cache size of each edge and shield, as a size string."
  type        = string
  default     = "256MiB"
}

variable "tls" {
  description = "Serve HTTPS too: a throwaway CA and certificate are generated (scripts/certs.py, run by local-exec) for demo_host and the fleet's addresses; edges get a TLS listener (ports.edge_tls on their region's address) and edges reach shields over TLS verified against that CA."
  type        = bool
  default     = false
}

variable "purge_log" {
  description = "The purge log: \"sqlite\" (one purge API process) or \"jetstream\" (purge_api_replicas processes sharing a local NATS JetStream cluster of nats_servers servers)."
  type        = string
  default     = "sqlite"

  validation {
    condition     = contains(["sqlite", "jetstream"], var.purge_log)
    error_message = "purge_log must be \"sqlite\" or \"jetstream\"."
  }
}

variable "purge_api_replicas" {
  description = "Purge API processes when purge_log is \"jetstream\"."
  type        = number
  default     = 2

  validation {
    condition     = var.purge_api_replicas >= 1 && var.purge_api_replicas <= 5
    error_message = "purge_api_replicas must be 1 to 5."
  }
}

variable "nats_servers" {
  description = "NATS servers (Debian's nats-server on PATH) in the local cluster when purge_log is \"jetstream\"; 3 keep the purge log through the loss of one."
  type        = number
  default     = 3

  validation {
    condition     = var.nats_servers >= 1 && var.nats_servers <= 5
    error_message = "nats_servers must be 1 to 5."
  }
}
