variable "name" {
  description = "The site's name (its region name in fleet.toml)."
  type        = string
}

variable "vpc_cidr" {
  description = "The site's VPC CIDR."
  type        = string
}

variable "subnet_cidr" {
  description = "The public subnet inside the VPC where every node of the site lives."
  type        = string
}

variable "fleet_cidrs" {
  description = "Every site's VPC CIDR: the only sources allowed on admin and internal ports."
  type        = list(string)
}

variable "peer_routes" {
  description = "Other sites' VPC CIDR => VPC peering connection id to route it through."
  type        = map(string)
}

variable "nodes" {
  description = "Node name => role (edge, shield, purge-api, geo), fixed private IP, whether it gets an Elastic IP, and instance type."
  type = map(object({
    role          = string
    private_ip    = string
    public        = bool
    instance_type = string
  }))
}

variable "user_data" {
  description = "Node name => cloud-init user data (from modules/cloud-init)."
  type        = map(string)
  sensitive   = true
}

variable "ports" {
  description = "The fleet's ports: edge, edge_tls, admin, shield, purge_api, dns, geo_http."
  type = object({
    edge      = number
    edge_tls  = number
    admin     = number
    shield    = number
    purge_api = number
    dns       = number
    geo_http  = number
  })
}

variable "ami_parameter" {
  description = "SSM parameter holding the AMI id."
  type        = string
}

variable "root_volume_gb" {
  description = "Root volume size in GiB."
  type        = number
}

variable "ssh_key_name" {
  description = "EC2 key pair for SSH, or null."
  type        = string
  default     = null
}

variable "ssh_cidrs" {
  description = "Networks allowed to SSH in; empty closes SSH."
  type        = list(string)
  default     = []
}

variable "purge_api_cidrs" {
  description = "Networks besides the fleet allowed to call the purge API."
  type        = list(string)
  default     = []
}

variable "nats_ports" {
  description = "Ports of the NATS JetStream servers on this site's shields (clients, cluster routes), opened to the fleet's VPC CIDRs; [] when the site runs none."
  type        = list(number)
  default     = []
}
