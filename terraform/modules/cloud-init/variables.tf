variable "fleet_toml" {
  description = "The rendered fleet.toml (the fleet_toml output of modules/fleet)."
  type        = string
}

variable "role" {
  description = "The role this machine runs: edge, shield, purge-api or geo."
  type        = string

  validation {
    condition     = contains(["edge", "shield", "purge-api", "geo"], var.role)
    error_message = "role must be one of edge, shield, purge-api, geo."
  }
}

variable "node_name" {
  description = "The node's name in fleet.toml (edges and shields; ignored for purge-api and geo)."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]*$", var.node_name))
    error_message = "node_name may hold letters, digits, dot, dash and underscore only."
  }
}

variable "package" {
  description = "What pip installs: a version spec (edgeshield==0.1.0), a wheel URL, or a git URL."
  type        = string
  default     = "edgeshield"
}

variable "node_secret" {
  description = "The shared node secret, written to an owner-only environment file."
  type        = string
  sensitive   = true
}

variable "node_secret_env" {
  description = "Name of the environment variable that carries the node secret (fleet.toml [security])."
  type        = string
  default     = "EDGESHIELD_NODE_SECRET"
}

variable "mmdb_url" {
  description = "geo only: URL of a GeoIP City database (.mmdb) to download. Empty: build a simulated one from fleet.toml."
  type        = string
  default     = ""
}

variable "mmdb_path" {
  description = "geo only: where the GeoIP database is kept; must match [geo] mmdb in fleet.toml."
  type        = string
  default     = "/var/lib/edgeshield/geo.mmdb"
}

variable "tls_cert_pem" {
  description = "PEM certificate chain written to /etc/edgeshield/tls/site.crt (empty: none)."
  type        = string
  default     = ""
  sensitive   = true
}

variable "tls_key_pem" {
  description = "PEM private key written to /etc/edgeshield/tls/site.key, readable by the node only (empty: none)."
  type        = string
  default     = ""
  sensitive   = true
}

variable "listen" {
  description = "For a purge API replica (a JetStream purge log): the address it listens on (`--listen`). Empty: the first of [purge_api] listen."
  type        = string
  default     = ""
}

variable "nats" {
  description = "A NATS JetStream server to run on this machine beside its role (Debian's nats-server package): its name, the private address it binds (clients on 4222, cluster routes on 6222), and the route URLs of the other servers. Null: none."
  type = object({
    name    = string
    address = string
    routes  = list(string)
  })
  default = null
}
