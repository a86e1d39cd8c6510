# A whole fleet on this machine: the demo origin, the purge API, shields, edges and
# GeoDNS, each a background process started by a terraform_data resource and stopped
# when that resource is destroyed. Each region's edges listen on their own loopback
# address, so GeoDNS answers differ by region as they would across real regions.

locals {
  state_dir   = abspath(var.state_dir != "" ? var.state_dir : "${path.module}/run")
  fleet_file  = "${local.state_dir}/fleet.toml"
  secret_file = "${local.state_dir}/node-secret.env"
  mmdb_file   = "${local.state_dir}/geo/fleet.mmdb"
  node_script = abspath("${path.module}/scripts/node.py")
  tls_dir     = "${local.state_dir}/tls"
  tls_cert    = var.tls ? "${local.tls_dir}/site.crt" : null
  tls_key     = var.tls ? "${local.tls_dir}/site.key" : null
  service     = var.service
  origin      = "127.0.0.1:${var.ports.origin}"

  edges = flatten([for r in var.regions : [for i in range(var.edges_per_region) : {
    name           = var.edges_per_region == 1 ? "edge-${r.name}" : "edge-${r.name}-${i + 1}"
    region         = r.name
    listen         = "${r.edge_address}:${var.ports.edge + 2 * i}"
    admin_listen   = "${r.edge_address}:${var.ports.edge_admin + 2 * i}"
    cache_dir      = "${local.state_dir}/cache/edge-${r.name}-${i + 1}"
    cache_size     = var.cache_size
    public_address = r.edge_address
    tls_listen     = var.tls ? "${r.edge_address}:${var.ports.edge_tls + 2 * i}" : null
  }]])

  shields = [for i in range(var.shield_count) : {
    name         = "shield-${i + 1}"
    region       = var.regions[i % length(var.regions)].name
    listen       = "127.0.0.1:${var.ports.shield + 2 * i}"
    admin_listen = "127.0.0.1:${var.ports.shield + 2 * i + 1}"
    cache_dir    = "${local.state_dir}/cache/shield-${i + 1}"
    cache_size   = var.cache_size
    tls_listen   = var.tls ? "127.0.0.1:${var.ports.shield_tls + i}" : null
    tls_cert     = local.tls_cert
    tls_key      = local.tls_key
  }]

  # A JetStream purge log: a local NATS cluster and purge API replicas sharing it.
  jetstream = var.purge_log == "jetstream"
  nats = local.jetstream ? [for i in range(var.nats_servers) : {
    name    = "nats-${i + 1}"
    port    = var.ports.nats + 2 * i
    cluster = var.ports.nats + 2 * i + 1
    store   = "${local.state_dir}/nats/nats-${i + 1}"
  }] : []
  purge_api_addresses = local.jetstream ? [for i in range(var.purge_api_replicas) : "127.0.0.1:${var.ports.purge_api + i}"] : ["127.0.0.1:${var.ports.purge_api}"]

  # Everything a destroy-time provisioner needs, since it may only refer to self.
  helper = {
    python = var.python
    script = local.node_script
  }
}

module "fleet" {
  source = "../modules/fleet"

  regions = [for r in var.regions : {
    name            = r.name
    latitude        = r.latitude
    longitude       = r.longitude
    client_networks = r.client_networks
  }]
  services = [{
    name              = local.service
    hosts             = [var.demo_host]
    origins           = ["http://${local.origin}"]
    health_check_path = "/"
    tls_cert          = local.tls_cert
    tls_key           = local.tls_key
  }]
  shields = local.shields
  edges   = local.edges
  purge_api = {
    listen   = "127.0.0.1:${var.ports.purge_api}"
    data_dir = "${local.state_dir}/purge-api"
    tokens   = [{ name = "local", sha256 = lower(var.purge_token_sha256), services = [local.service] }]
    log      = var.purge_log
    replicas = local.jetstream ? local.purge_api_addresses : null
  }
  nats = local.jetstream ? { servers = [for n in local.nats : "nats://127.0.0.1:${n.port}"] } : null
  geo = {
    dns_listen  = "127.0.0.1:${var.ports.dns}"
    http_listen = "127.0.0.1:${var.ports.geo_http}"
    zone        = var.zone
    mmdb        = local.mmdb_file
    ttl         = 10
  }
  node_secret_env = var.node_secret_env
  tls             = var.tls ? { node_ca = "${local.tls_dir}/ca.pem" } : null
}

# The state directory: made first and removed last on destroy (with the fleet file,
# the node secret, caches and logs), unless it existed before this module ran.
resource "terraform_data" "state_dir" {
  input = merge(local.helper, { path = local.state_dir })

  provisioner "local-exec" {
    command     = self.input.path
    interpreter = [self.input.python, self.input.script, "claim-dir"]
  }

  provisioner "local-exec" {
    when        = destroy
    command     = self.input.path
    interpreter = [self.input.python, self.input.script, "release-dir"]
  }
}

# With var.tls: a throwaway CA and one certificate (the demo host, and every address
# edges and shields listen on) written before the fleet file that names them.
resource "terraform_data" "certs" {
  count            = var.tls ? 1 : 0
  triggers_replace = [var.demo_host, join(",", [for r in var.regions : r.edge_address])]
  depends_on       = [terraform_data.state_dir]

  provisioner "local-exec" {
    command     = join(",", concat(["127.0.0.1"], [for r in var.regions : r.edge_address]))
    interpreter = [var.python, abspath("${path.module}/scripts/certs.py"), local.tls_dir, var.demo_host]
  }
}

# The fleet file every node reads; rewritten (and every node restarted) when it changes.
resource "terraform_data" "fleet_file" {
  triggers_replace = sha256(module.fleet.fleet_toml)
  input            = { path = local.fleet_file }
  depends_on       = [terraform_data.certs, terraform_data.state_dir]

  provisioner "local-exec" {
    command     = local.fleet_file
    interpreter = [var.python, local.node_script, "write-file"]
    environment = { NODE_FILE_B64 = base64encode(module.fleet.fleet_toml) }
  }
}

# The node secret, in an owner-only env file the helper hands to each node, so the
# secret never appears in a command line or in provisioner output.
resource "terraform_data" "secret_file" {
  triggers_replace = sha256("${var.node_secret_env}=${var.node_secret}")
  depends_on       = [terraform_data.state_dir]

  provisioner "local-exec" {
    command     = local.secret_file
    interpreter = [var.python, local.node_script, "write-file"]
    environment = { NODE_FILE_B64 = base64encode("${var.node_secret_env}=${var.node_secret}\n") }
  }
}

resource "terraform_data" "origin" {
  triggers_replace = terraform_data.fleet_file.id
  input = merge(local.helper, {
    pid_file = "${local.state_dir}/pids/origin.pid"
    log_file = "${local.state_dir}/logs/origin.log"
    wait     = local.origin
    argv     = [var.python, "-m", "demo.origin", "--listen", local.origin]
  })

  provisioner "local-exec" {
    command     = jsonencode(self.input.argv)
    interpreter = [self.input.python, self.input.script, "start", "--pid-file", self.input.pid_file, "--log-file", self.input.log_file, "--wait", self.input.wait, "--argv"]
  }

  provisioner "local-exec" {
    when        = destroy
    command     = self.input.pid_file
    interpreter = [self.input.python, self.input.script, "stop"]
  }
}

resource "terraform_data" "purge_api" {
  triggers_replace = [terraform_data.fleet_file.id, terraform_data.secret_file.id]
  input = merge(local.helper, {
    pid_file = "${local.state_dir}/pids/purge-api.pid"
    log_file = "${local.state_dir}/logs/purge-api.log"
    wait     = "127.0.0.1:${var.ports.purge_api}"
    argv     = concat([var.python, "-m", "cli.main", "purge-api", "--config", local.fleet_file], local.jetstream ? ["--listen", local.purge_api_addresses[0]] : [])
  })
  depends_on = [terraform_data.nats]

  provisioner "local-exec" {
    command     = jsonencode(self.input.argv)
    interpreter = [self.input.python, self.input.script, "start", "--pid-file", self.input.pid_file, "--log-file", self.input.log_file, "--wait", self.input.wait, "--env-file", local.secret_file, "--argv"]
  }

  provisioner "local-exec" {
    when        = destroy
    command     = self.input.pid_file
    interpreter = [self.input.python, self.input.script, "stop"]
  }
}

# Shields come up before any edge, so no edge starts with an empty shield ring.
resource "terraform_data" "shield" {
  for_each = { for n in local.shields : n.name => n }

  triggers_replace = [terraform_data.fleet_file.id, terraform_data.secret_file.id]
  input = merge(local.helper, {
    pid_file = "${local.state_dir}/pids/${each.key}.pid"
    log_file = "${local.state_dir}/logs/${each.key}.log"
    wait     = each.value.listen
    argv     = [var.python, "-m", "cli.main", "shield", "--config", local.fleet_file, "--node", each.key]
  })
  depends_on = [terraform_data.origin, terraform_data.purge_api]

  provisioner "local-exec" {
    command     = jsonencode(self.input.argv)
    interpreter = [self.input.python, self.input.script, "start", "--pid-file", self.input.pid_file, "--log-file", self.input.log_file, "--wait", self.input.wait, "--env-file", local.secret_file, "--argv"]
  }

  provisioner "local-exec" {
    when        = destroy
    command     = self.input.pid_file
    interpreter = [self.input.python, self.input.script, "stop"]
  }
}

resource "terraform_data" "edge" {
  for_each = { for n in local.edges : n.name => n }

  triggers_replace = [terraform_data.fleet_file.id, terraform_data.secret_file.id]
  input = merge(local.helper, {
    pid_file = "${local.state_dir}/pids/${each.key}.pid"
    log_file = "${local.state_dir}/logs/${each.key}.log"
    wait     = each.value.listen
    argv     = [var.python, "-m", "cli.main", "edge", "--config", local.fleet_file, "--node", each.key]
  })
  depends_on = [terraform_data.shield, terraform_data.purge_api]

  provisioner "local-exec" {
    command     = jsonencode(self.input.argv)
    interpreter = [self.input.python, self.input.script, "start", "--pid-file", self.input.pid_file, "--log-file", self.input.log_file, "--wait", self.input.wait, "--env-file", local.secret_file, "--argv"]
  }

  provisioner "local-exec" {
    when        = destroy
    command     = self.input.pid_file
    interpreter = [self.input.python, self.input.script, "stop"]
  }
}

# The simulated GeoIP database: each region's client networks placed at its coordinates.
resource "terraform_data" "geo_mmdb" {
  triggers_replace = terraform_data.fleet_file.id

  provisioner "local-exec" {
    command     = local.mmdb_file
    interpreter = [var.python, "-m", "cli.main", "geo", "build-mmdb", "--config", local.fleet_file, "-o"]
  }
}

resource "terraform_data" "geo" {
  triggers_replace = [terraform_data.fleet_file.id, terraform_data.secret_file.id, terraform_data.geo_mmdb.id]
  input = merge(local.helper, {
    pid_file = "${local.state_dir}/pids/geo.pid"
    log_file = "${local.state_dir}/logs/geo.log"
    wait     = "127.0.0.1:${var.ports.geo_http}"
    argv     = [var.python, "-m", "cli.main", "geo", "serve", "--config", local.fleet_file]
  })
  depends_on = [terraform_data.edge]

  provisioner "local-exec" {
    command     = jsonencode(self.input.argv)
    interpreter = [self.input.python, self.input.script, "start", "--pid-file", self.input.pid_file, "--log-file", self.input.log_file, "--wait", self.input.wait, "--env-file", local.secret_file, "--argv"]
  }

  provisioner "local-exec" {
    when        = destroy
    command     = self.input.pid_file
    interpreter = [self.input.python, self.input.script, "stop"]
  }
}

# The NATS JetStream cluster of a "jetstream" purge log: one nats-server per entry of
# local.nats, each with its own store, routed to the others.
resource "terraform_data" "nats" {
  for_each = { for n in local.nats : n.name => n }

  triggers_replace = terraform_data.fleet_file.id
  input = merge(local.helper, {
    pid_file = "${local.state_dir}/pids/${each.key}.pid"
    log_file = "${local.state_dir}/logs/${each.key}.log"
    wait     = "127.0.0.1:${each.value.port}"
    argv = concat(
      ["nats-server", "-js", "-a", "127.0.0.1", "-p", tostring(each.value.port), "-sd", each.value.store, "-n", each.key],
      length(local.nats) > 1 ? [
        "--cluster_name", "edgeshield-local", "--cluster", "nats://127.0.0.1:${each.value.cluster}",
        "--routes", join(",", [for n in local.nats : "nats-route://127.0.0.1:${n.cluster}" if n.name != each.key]),
      ] : [],
    )
  })

  provisioner "local-exec" {
    command     = jsonencode(self.input.argv)
    interpreter = [self.input.python, self.input.script, "start", "--pid-file", self.input.pid_file, "--log-file", self.input.log_file, "--wait", self.input.wait, "--argv"]
  }

  provisioner "local-exec" {
    when        = destroy
    command     = self.input.pid_file
    interpreter = [self.input.python, self.input.script, "stop"]
  }
}

# Purge API replicas beyond the first (a "jetstream" purge log), each on its own port.
resource "terraform_data" "purge_api_replica" {
  for_each = { for i, a in local.purge_api_addresses : "purge-api-${i + 1}" => a if i > 0 }

  triggers_replace = [terraform_data.fleet_file.id, terraform_data.secret_file.id]
  input = merge(local.helper, {
    pid_file = "${local.state_dir}/pids/${each.key}.pid"
    log_file = "${local.state_dir}/logs/${each.key}.log"
    wait     = each.value
    argv     = [var.python, "-m", "cli.main", "purge-api", "--config", local.fleet_file, "--listen", each.value]
  })
  depends_on = [terraform_data.nats]

  provisioner "local-exec" {
    command     = jsonencode(self.input.argv)
    interpreter = [self.input.python, self.input.script, "start", "--pid-file", self.input.pid_file, "--log-file", self.input.log_file, "--wait", self.input.wait, "--env-file", local.secret_file, "--argv"]
  }

  provisioner "local-exec" {
    when        = destroy
    command     = self.input.pid_file
    interpreter = [self.input.python, self.input.script, "stop"]
  }
}
