# A real multi-region fleet: three sites, each a VPC in its own AWS region, joined by
# VPC peering so every node reaches every other on its private address. Nodes bind
# their private addresses (fixed below, so fleet.toml can name them before anything
# exists); edges, GeoDNS and the purge API also get Elastic IPs, which AWS maps 1:1
# to the private address. Admin ports are open only to the fleet's VPC CIDRs.

locals {
  ports = {
    edge      = 80
    edge_tls  = 443
    admin     = 9090
    shield    = 8080
    purge_api = 8000
    dns       = 53
    geo_http  = 8053
  }
  nats_ports     = { client = 4222, cluster = 6222 }
  mmdb_path      = "/var/lib/edgeshield/geo.mmdb"
  purge_api_site = var.purge_api_site != "" ? var.purge_api_site : var.sites[0].name
  fleet_cidrs    = [for s in var.sites : s.vpc_cidr]
  # with a certificate, every service serves it on the edges' port 443 (by SNI)
  tls      = var.tls_cert_pem != ""
  tls_cert = "/etc/edgeshield/tls/site.crt"
  tls_key  = "/etc/edgeshield/tls/site.key"

  # Every machine of the fleet: one node each, at a fixed host number of its subnet
  # (edges .10+, shields .20+, purge API .30, GeoDNS .40).
  nodes = merge(flatten([for s in var.sites : [
    { for i in range(s.edges) : "edge-${s.name}-${i + 1}" => { site = s.name, role = "edge", host = 10 + i, public = true } },
    { for i in range(s.shields) : "shield-${s.name}-${i + 1}" => { site = s.name, role = "shield", host = 20 + i, public = false } },
    { for _ in s.name == local.purge_api_site ? [1] : [] : "purge-api" => { site = s.name, role = "purge-api", host = 30, public = true } },
    # a JetStream purge log: a replica in every other site too
    { for _ in local.jetstream && s.name != local.purge_api_site ? [1] : [] : "purge-api-${s.name}" => { site = s.name, role = "purge-api", host = 30, public = true } },
    { for _ in s.geo ? [1] : [] : "geo-${s.name}" => { site = s.name, role = "geo", host = 40, public = true } },
  ]])...)

  jetstream          = var.purge_log == "jetstream"
  purge_api_replicas = [for name, n in local.nodes : "${local.private_ip[name]}:${local.ports.purge_api}" if n.role == "purge-api"]
  nats_hosts         = local.jetstream && length(var.nats_servers) == 0 ? { for s in var.sites : "shield-${s.name}-1" => s.name } : {}
  nats_servers       = length(var.nats_servers) > 0 ? var.nats_servers : [for name in keys(local.nats_hosts) : "nats://${local.private_ip[name]}:${local.nats_ports.client}"]

  subnet_cidr = { for s in var.sites : s.name => cidrsubnet(s.vpc_cidr, 24 - tonumber(split("/", s.vpc_cidr)[1]), 0) }
  private_ip  = { for name, n in local.nodes : name => cidrhost(local.subnet_cidr[n.site], n.host) }
  public_ip = merge(
    module.site1.public_ips,
    module.site2.public_ips,
    module.site3.public_ips,
  )

  site_nodes = { for s in var.sites : s.name => {
    for name, n in local.nodes : name => {
      role          = n.role
      private_ip    = local.private_ip[name]
      public        = n.public
      instance_type = var.instance_types[replace(n.role, "-", "_")]
    } if n.site == s.name
  } }
}

provider "aws" {
  alias  = "site1"
  region = var.sites[0].aws_region
  default_tags {
    tags = merge({ Project = "edgeshield", Site = var.sites[0].name }, var.tags)
  }
}

provider "aws" {
  alias  = "site2"
  region = var.sites[1].aws_region
  default_tags {
    tags = merge({ Project = "edgeshield", Site = var.sites[1].name }, var.tags)
  }
}

provider "aws" {
  alias  = "site3"
  region = var.sites[2].aws_region
  default_tags {
    tags = merge({ Project = "edgeshield", Site = var.sites[2].name }, var.tags)
  }
}

module "fleet" {
  source = "../modules/fleet"

  regions = [for s in var.sites : {
    name            = s.name
    latitude        = s.latitude
    longitude       = s.longitude
    client_networks = s.client_networks
  }]
  services = [for s in var.services : merge(s, {
    tls_cert = local.tls ? local.tls_cert : null
    tls_key  = local.tls ? local.tls_key : null
  })]
  shields = [for name, n in local.nodes : {
    name         = name
    region       = n.site
    listen       = "${local.private_ip[name]}:${local.ports.shield}"
    admin_listen = "${local.private_ip[name]}:${local.ports.admin}"
    cache_dir    = "/var/cache/edgeshield/${name}"
    cache_size   = var.cache_sizes.shield
  } if n.role == "shield"]
  edges = [for name, n in local.nodes : {
    name           = name
    region         = n.site
    listen         = "${local.private_ip[name]}:${local.ports.edge}"
    admin_listen   = "${local.private_ip[name]}:${local.ports.admin}"
    cache_dir      = "/var/cache/edgeshield/${name}"
    cache_size     = var.cache_sizes.edge
    public_address = local.public_ip[name]
    tls_listen     = local.tls ? "${local.private_ip[name]}:${local.ports.edge_tls}" : null
  } if n.role == "edge"]
  purge_api = {
    listen   = "${local.private_ip["purge-api"]}:${local.ports.purge_api}"
    data_dir = "/var/lib/edgeshield/purge-api"
    tokens   = var.purge_tokens
    log      = var.purge_log
    replicas = local.jetstream ? local.purge_api_replicas : null
  }
  nats = local.jetstream ? { servers = local.nats_servers } : null
  geo = {
    # Every GeoDNS node reads the same file, so they bind the wildcard address.
    dns_listen  = "0.0.0.0:${local.ports.dns}"
    http_listen = "0.0.0.0:${local.ports.geo_http}"
    zone        = var.zone
    mmdb        = local.mmdb_path
  }
}

module "user_data" {
  source   = "../modules/cloud-init"
  for_each = local.nodes

  fleet_toml  = module.fleet.fleet_toml
  role        = each.value.role
  node_name   = each.key
  package     = var.edgeshield_package
  node_secret = var.node_secret
  mmdb_url    = var.mmdb_url
  mmdb_path   = local.mmdb_path
  # every machine runs `edgeshield check` on the same fleet.toml, which reads the files
  tls_cert_pem = var.tls_cert_pem
  tls_key_pem  = var.tls_key_pem
  listen       = local.jetstream && each.value.role == "purge-api" ? "${local.private_ip[each.key]}:${local.ports.purge_api}" : ""
  nats = contains(keys(local.nats_hosts), each.key) ? {
    name    = "nats-${each.value.site}"
    address = local.private_ip[each.key]
    routes  = [for name in keys(local.nats_hosts) : "nats-route://${local.private_ip[name]}:${local.nats_ports.cluster}" if name != each.key]
  } : null
}

module "site1" {
  source    = "./modules/site"
  providers = { aws = aws.site1 }

  name            = var.sites[0].name
  vpc_cidr        = var.sites[0].vpc_cidr
  subnet_cidr     = local.subnet_cidr[var.sites[0].name]
  fleet_cidrs     = local.fleet_cidrs
  peer_routes     = { (var.sites[1].vpc_cidr) = aws_vpc_peering_connection.site1_site2.id, (var.sites[2].vpc_cidr) = aws_vpc_peering_connection.site1_site3.id }
  nodes           = local.site_nodes[var.sites[0].name]
  user_data       = { for name, m in module.user_data : name => m.user_data if local.nodes[name].site == var.sites[0].name }
  ports           = local.ports
  ami_parameter   = var.ami_ssm_parameter
  root_volume_gb  = var.root_volume_gb
  ssh_key_name    = var.ssh_key_name
  ssh_cidrs       = var.ssh_cidrs
  purge_api_cidrs = var.purge_api_cidrs
  nats_ports      = length(local.nats_hosts) > 0 ? values(local.nats_ports) : []
}

module "site2" {
  source    = "./modules/site"
  providers = { aws = aws.site2 }

  name            = var.sites[1].name
  vpc_cidr        = var.sites[1].vpc_cidr
  subnet_cidr     = local.subnet_cidr[var.sites[1].name]
  fleet_cidrs     = local.fleet_cidrs
  peer_routes     = { (var.sites[0].vpc_cidr) = aws_vpc_peering_connection.site1_site2.id, (var.sites[2].vpc_cidr) = aws_vpc_peering_connection.site2_site3.id }
  nodes           = local.site_nodes[var.sites[1].name]
  user_data       = { for name, m in module.user_data : name => m.user_data if local.nodes[name].site == var.sites[1].name }
  ports           = local.ports
  ami_parameter   = var.ami_ssm_parameter
  root_volume_gb  = var.root_volume_gb
  ssh_key_name    = var.ssh_key_name
  ssh_cidrs       = var.ssh_cidrs
  purge_api_cidrs = var.purge_api_cidrs
  nats_ports      = length(local.nats_hosts) > 0 ? values(local.nats_ports) : []
}

module "site3" {
  source    = "./modules/site"
  providers = { aws = aws.site3 }

  name            = var.sites[2].name
  vpc_cidr        = var.sites[2].vpc_cidr
  subnet_cidr     = local.subnet_cidr[var.sites[2].name]
  fleet_cidrs     = local.fleet_cidrs
  peer_routes     = { (var.sites[0].vpc_cidr) = aws_vpc_peering_connection.site1_site3.id, (var.sites[1].vpc_cidr) = aws_vpc_peering_connection.site2_site3.id }
  nodes           = local.site_nodes[var.sites[2].name]
  user_data       = { for name, m in module.user_data : name => m.user_data if local.nodes[name].site == var.sites[2].name }
  ports           = local.ports
  ami_parameter   = var.ami_ssm_parameter
  root_volume_gb  = var.root_volume_gb
  ssh_key_name    = var.ssh_key_name
  ssh_cidrs       = var.ssh_cidrs
  purge_api_cidrs = var.purge_api_cidrs
  nats_ports      = length(local.nats_hosts) > 0 ? values(local.nats_ports) : []
}

# Inter-region VPC peering, a full mesh: the requester side in one region, the
# accepter in the other.
resource "aws_vpc_peering_connection" "site1_site2" {
  provider    = aws.site1
  vpc_id      = module.site1.vpc_id
  peer_vpc_id = module.site2.vpc_id
  peer_region = var.sites[1].aws_region
  tags        = { Name = "edgeshield-${var.sites[0].name}-${var.sites[1].name}" }
}

resource "aws_vpc_peering_connection_accepter" "site1_site2" {
  provider                  = aws.site2
  vpc_peering_connection_id = aws_vpc_peering_connection.site1_site2.id
  auto_accept               = true
}

resource "aws_vpc_peering_connection" "site1_site3" {
  provider    = aws.site1
  vpc_id      = module.site1.vpc_id
  peer_vpc_id = module.site3.vpc_id
  peer_region = var.sites[2].aws_region
  tags        = { Name = "edgeshield-${var.sites[0].name}-${var.sites[2].name}" }
}

resource "aws_vpc_peering_connection_accepter" "site1_site3" {
  provider                  = aws.site3
  vpc_peering_connection_id = aws_vpc_peering_connection.site1_site3.id
  auto_accept               = true
}

resource "aws_vpc_peering_connection" "site2_site3" {
  provider    = aws.site2
  vpc_id      = module.site2.vpc_id
  peer_vpc_id = module.site3.vpc_id
  peer_region = var.sites[2].aws_region
  tags        = { Name = "edgeshield-${var.sites[1].name}-${var.sites[2].name}" }
}

resource "aws_vpc_peering_connection_accepter" "site2_site3" {
  provider                  = aws.site3
  vpc_peering_connection_id = aws_vpc_peering_connection.site2_site3.id
  auto_accept               = true
}
