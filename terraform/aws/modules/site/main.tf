# One site of the fleet in one AWS region: a VPC with one public subnet, routes to
# the other sites through VPC peering, a security group per role, and one instance
# per node at its fixed private address (with an Elastic IP where the public reaches it).

locals {
  roles = toset([for n in values(var.nodes) : n.role])

  # What each role opens, and to whom. The public reaches only edge traffic and DNS;
  # everything else (admin endpoints, shields, GeoDNS health API) is fleet-only.
  rules = concat(
    [for cidr in ["0.0.0.0/0"] : { role = "edge", port = var.ports.edge, protocol = "tcp", cidr = cidr, what = "HTTP from users" }],
    [for cidr in ["0.0.0.0/0"] : { role = "edge", port = var.ports.edge_tls, protocol = "tcp", cidr = cidr, what = "HTTPS from users" }],
    [for cidr in var.fleet_cidrs : { role = "edge", port = var.ports.admin, protocol = "tcp", cidr = cidr, what = "admin from the fleet" }],
    [for cidr in var.fleet_cidrs : { role = "shield", port = var.ports.shield, protocol = "tcp", cidr = cidr, what = "fills from edges" }],
    [for cidr in var.fleet_cidrs : { role = "shield", port = var.ports.admin, protocol = "tcp", cidr = cidr, what = "admin from the fleet" }],
    [for cidr in distinct(concat(var.fleet_cidrs, var.purge_api_cidrs)) : { role = "purge-api", port = var.ports.purge_api, protocol = "tcp", cidr = cidr, what = "purge API" }],
    [for cidr in ["0.0.0.0/0"] : { role = "geo", port = var.ports.dns, protocol = "udp", cidr = cidr, what = "DNS over UDP" }],
    [for cidr in ["0.0.0.0/0"] : { role = "geo", port = var.ports.dns, protocol = "tcp", cidr = cidr, what = "DNS over TCP" }],
    [for cidr in var.fleet_cidrs : { role = "geo", port = var.ports.geo_http, protocol = "tcp", cidr = cidr, what = "GeoDNS HTTP API from the fleet" }],
    flatten([for port in var.nats_ports : [for cidr in var.fleet_cidrs : { role = "shield", port = port, protocol = "tcp", cidr = cidr, what = "NATS JetStream of the purge log" }]]),
    flatten([for role in local.roles : [for cidr in var.ssh_cidrs : { role = role, port = 22, protocol = "tcp", cidr = cidr, what = "SSH" }]]),
  )
  rules_by_key = { for r in local.rules : "${r.role}-${r.protocol}-${r.port}-${r.cidr}" => r if contains(local.roles, r.role) }
}

data "aws_ssm_parameter" "ami" {
  name = var.ami_parameter
}

data "aws_availability_zones" "available" {
  state = "available"
}

resource "aws_vpc" "this" {
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = { Name = "edgeshield-${var.name}" }
}

resource "aws_internet_gateway" "this" {
  vpc_id = aws_vpc.this.id
  tags   = { Name = "edgeshield-${var.name}" }
}

resource "aws_subnet" "public" {
  vpc_id            = aws_vpc.this.id
  cidr_block        = var.subnet_cidr
  availability_zone = data.aws_availability_zones.available.names[0]
  tags              = { Name = "edgeshield-${var.name}-public" }
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.this.id
  tags   = { Name = "edgeshield-${var.name}" }
}

resource "aws_route" "internet" {
  route_table_id         = aws_route_table.public.id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.this.id
}

resource "aws_route" "peers" {
  for_each = var.peer_routes

  route_table_id            = aws_route_table.public.id
  destination_cidr_block    = each.key
  vpc_peering_connection_id = each.value
}

resource "aws_route_table_association" "public" {
  subnet_id      = aws_subnet.public.id
  route_table_id = aws_route_table.public.id
}

resource "aws_security_group" "role" {
  for_each = local.roles

  name        = "edgeshield-${var.name}-${each.key}"
  description = "edgeshield ${each.key} nodes in ${var.name}"
  vpc_id      = aws_vpc.this.id
  tags        = { Name = "edgeshield-${var.name}-${each.key}" }
}

resource "aws_vpc_security_group_ingress_rule" "role" {
  for_each = local.rules_by_key

  security_group_id = aws_security_group.role[each.value.role].id
  description       = each.value.what
  ip_protocol       = each.value.protocol
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr
}

# Outbound is open: pip installs, origins anywhere, other sites, package mirrors.
resource "aws_vpc_security_group_egress_rule" "all" {
  for_each = local.roles

  security_group_id = aws_security_group.role[each.key].id
  description       = "all outbound"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_eip" "node" {
  for_each = { for name, n in var.nodes : name => n if n.public }

  domain = "vpc"
  tags   = { Name = "edgeshield-${each.key}", Role = each.value.role }
}

resource "aws_instance" "node" {
  for_each = var.nodes

  ami                         = data.aws_ssm_parameter.ami.insecure_value
  instance_type               = each.value.instance_type
  subnet_id                   = aws_subnet.public.id
  private_ip                  = each.value.private_ip
  vpc_security_group_ids      = [aws_security_group.role[each.value.role].id]
  key_name                    = var.ssh_key_name
  associate_public_ip_address = !each.value.public
  user_data                   = var.user_data[each.key]
  # A new fleet.toml is a new machine: cloud-init runs once, at first boot.
  user_data_replace_on_change = true

  metadata_options {
    http_tokens = "required"
  }

  root_block_device {
    volume_size = var.root_volume_gb
    volume_type = "gp3"
    encrypted   = true
  }

  tags = { Name = "edgeshield-${each.key}", Role = each.value.role }

  depends_on = [aws_route.internet, aws_route_table_association.public]
}

resource "aws_eip_association" "node" {
  for_each = aws_eip.node

  allocation_id = each.value.id
  instance_id   = aws_instance.node[each.key].id
}
