variable "sites" {
  description = "Exactly three sites, one per AWS region (provider aliases aws.site1..site3): a region name for the fleet, the AWS region, coordinates, client networks for GeoDNS overrides, a VPC CIDR that overlaps no other site's, and how many edges and shields it runs. Every site runs a GeoDNS node unless geo = false."
  type = list(object({
    name            = string
    aws_region      = string
    latitude        = number
    longitude       = number
    client_networks = optional(list(string), [])
    vpc_cidr        = string
    edges           = optional(number, 1)
    shields         = optional(number, 0)
    geo             = optional(bool, true)
  }))

  validation {
    condition     = length(var.sites) == 3
    error_message = "Exactly three sites: one for each provider alias (aws.site1, aws.site2, aws.site3)."
  }
  validation {
    condition     = length(distinct([for s in var.sites : s.name])) == length(var.sites) && alltrue([for s in var.sites : can(regex("^[a-z][a-z0-9-]{0,30}$", s.name))])
    error_message = "Site names must be unique, lowercase, start with a letter and use only a-z, 0-9 and dashes."
  }
  validation {
    condition     = alltrue([for s in var.sites : can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", s.aws_region))])
    error_message = "aws_region must be an AWS region name such as eu-central-1."
  }
  validation {
    condition     = alltrue([for s in var.sites : s.latitude >= -90 && s.latitude <= 90 && s.longitude >= -180 && s.longitude <= 180])
    error_message = "Latitude must be within -90..90 and longitude within -180..180."
  }
  validation {
    condition     = alltrue([for s in var.sites : can(cidrhost(s.vpc_cidr, 0)) && tonumber(split("/", s.vpc_cidr)[1]) <= 24]) && length(distinct([for s in var.sites : cidrhost(s.vpc_cidr, 0)])) == 3
    error_message = "Each vpc_cidr must be a distinct IPv4 CIDR of /24 or larger (for example 10.10.0.0/16, 10.20.0.0/16, 10.30.0.0/16)."
  }
  validation {
    condition     = alltrue(flatten([for s in var.sites : [for n in s.client_networks : can(cidrhost(n, 0))]]))
    error_message = "client_networks must be CIDRs."
  }
  validation {
    condition     = alltrue([for s in var.sites : s.edges >= 1 && s.edges <= 9 && s.shields >= 0 && s.shields <= 9]) && sum([for s in var.sites : s.shields]) >= 1
    error_message = "Each site needs 1-9 edges and 0-9 shields, and the fleet at least one shield."
  }
  validation {
    condition     = anytrue([for s in var.sites : s.geo])
    error_message = "At least one site must run GeoDNS (geo = true)."
  }
}

variable "purge_api_site" {
  description = "Name of the site that runs the purge API. Empty: the first site."
  type        = string
  default     = ""

  validation {
    condition     = var.purge_api_site == "" || contains([for s in var.sites : s.name], var.purge_api_site)
    error_message = "purge_api_site must be the name of one of the sites."
  }
}

variable "zone" {
  description = "The DNS zone delegated to the GeoDNS nodes, for example cdn.example.com; users reach <service>.<zone>."
  type        = string

  validation {
    condition     = can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]{2,63}\\.?$", lower(var.zone)))
    error_message = "zone must be a domain name such as cdn.example.com."
  }
}

variable "services" {
  description = "Sites the CDN serves: name (GeoDNS answers <name>.<zone>), the hosts users ask for, and origin URLs (http://host:port) reachable from the shields."
  type = list(object({
    name    = string
    hosts   = list(string)
    origins = list(string)
  }))

  validation {
    condition     = length(var.services) > 0 && length(distinct([for s in var.services : s.name])) == length(var.services)
    error_message = "At least one service, with unique names."
  }
  validation {
    condition     = alltrue([for s in var.services : can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", s.name))])
    error_message = "Service names must be DNS labels (a-z, 0-9, dashes)."
  }
  validation {
    condition     = alltrue([for s in var.services : length(s.hosts) > 0 && length(s.origins) > 0 && alltrue([for o in s.origins : can(regex("^https?://[^/\\s]+/?$", o))])])
    error_message = "Every service needs hosts and origins, and origins must be URLs like http://host:port."
  }
}

variable "purge_tokens" {
  description = "Purge tokens by their SHA-256 (hex) and the services each may purge (\"*\": all). Make one with `edgeshield purge-api hash-token`."
  type = list(object({
    name     = string
    sha256   = string
    services = list(string)
  }))

  validation {
    condition     = alltrue([for t in var.purge_tokens : can(regex("^[0-9a-fA-F]{64}$", t.sha256))])
    error_message = "Each purge token sha256 must be 64 hex digits: the hash of the token, never the token."
  }
}

variable "node_secret" {
  description = "The shared node secret that guards admin endpoints (at least 32 characters; for example `openssl rand -hex 32`)."
  type        = string
  sensitive   = true

  validation {
    condition     = length(var.node_secret) >= 32
    error_message = "The node secret must be at least 32 characters long."
  }
}

variable "edgeshield_package" {
  description = "What pip installs on every machine: the URL of the wheel `make dist` builds (hosted where the instances can fetch it), or a git+https URL of the repository. edgeshield is not on PyPI."
  type        = string

  validation {
    condition     = length(trimspace(var.edgeshield_package)) > 0 && !can(regex("[\"\\n]", var.edgeshield_package))
    error_message = "edgeshield_package must be a non-empty pip requirement without quotes or newlines."
  }

  validation {
    condition     = !can(regex("^edgeshield([=<>~ ].*)?$", trimspace(var.edgeshield_package)))
    error_message = "edgeshield is not on PyPI: give the URL of the wheel `make dist` builds, or a git+https URL."
  }
}

variable "instance_types" {
  description = "EC2 instance type per role."
  type = object({
    edge      = optional(string, "c7i.large")
    shield    = optional(string, "c7i.xlarge")
    purge_api = optional(string, "t3.small")
    geo       = optional(string, "t3.small")
  })
  default = {}
}

variable "cache_sizes" {
  description = "Disk cache size per role, as a size string (keep it below the root volume)."
  type = object({
    edge   = optional(string, "20GiB")
    shield = optional(string, "80GiB")
  })
  default = {}

  validation {
    condition     = alltrue([for v in values(var.cache_sizes) : can(regex("^[0-9]+(\\.[0-9]+)?\\s*([KMGT]i?B|[KMGT]|B)?$", v))])
    error_message = "Cache sizes must be size strings such as \"20GiB\"."
  }
}

variable "root_volume_gb" {
  description = "Root volume size (GiB) of every machine; caches live on it."
  type        = number
  default     = 100

  validation {
    condition     = var.root_volume_gb >= 16 && var.root_volume_gb <= 16384
    error_message = "root_volume_gb must be from 16 to 16384."
  }
}

variable "ami_ssm_parameter" {
  description = "SSM parameter holding the AMI id to boot (any distribution with cloud-init, python3 and systemd)."
  type        = string
  default     = "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"
}

variable "ssh_key_name" {
  description = "EC2 key pair name (the same name in every region) for SSH; null for none."
  type        = string
  default     = null
}

variable "ssh_cidrs" {
  description = "Networks allowed to SSH into fleet machines; empty closes SSH."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.ssh_cidrs : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "ssh_cidrs must be CIDRs, and not 0.0.0.0/0."
  }
}

variable "purge_api_cidrs" {
  description = "Networks (besides the fleet) allowed to call the purge API, for example your CI runners."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.purge_api_cidrs : can(cidrhost(c, 0))])
    error_message = "purge_api_cidrs must be CIDRs."
  }
}

variable "mmdb_url" {
  description = "URL of a GeoIP City database (GeoLite2-City or DB-IP City, .mmdb) the GeoDNS nodes download. Empty: build a simulated one from the sites' client networks."
  type        = string
  default     = ""

  validation {
    condition     = var.mmdb_url == "" || can(regex("^https://", var.mmdb_url))
    error_message = "mmdb_url must be an https:// URL (or empty)."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

variable "tls_cert_pem" {
  description = "PEM certificate chain served over HTTPS (port 443) by every edge for the services' hosts; it must cover them all (by SAN or wildcard). Empty: HTTP only."
  type        = string
  default     = ""
  sensitive   = true
}

variable "tls_key_pem" {
  description = "PEM private key of tls_cert_pem (written owner-only on the edges by cloud-init)."
  type        = string
  default     = ""
  sensitive   = true

  validation {
    condition     = (var.tls_key_pem == "") == (var.tls_cert_pem == "")
    error_message = "tls_cert_pem and tls_key_pem go together: set both or neither."
  }
}

variable "purge_log" {
  description = "The purge log: \"sqlite\" (one purge API at purge_api_site) or \"jetstream\" (a purge API replica in every site, on a NATS JetStream cluster: nats-server on the first shield of each site, or the cluster of nats_servers)."
  type        = string
  default     = "sqlite"

  validation {
    condition     = contains(["sqlite", "jetstream"], var.purge_log)
    error_message = "purge_log must be \"sqlite\" or \"jetstream\"."
  }
}

variable "nats_servers" {
  description = "With purge_log = \"jetstream\": nats://host:port URLs of a NATS cluster you run; empty: the module runs one on the first shield of each site."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for s in var.nats_servers : can(regex("^(nats|tls)://[^\\s/]+:[0-9]{1,5}$", s))])
    error_message = "nats_servers must be nats://host:port (or tls://) URLs."
  }
}
