output "user_data" {
  description = "The cloud-init document (#cloud-config) for aws_instance.user_data or any cloud-init host."
  value       = local.user_data
  sensitive   = true
}

output "service_name" {
  description = "The systemd unit that runs the role (journalctl -u NAME for its log)."
  value       = local.service
}

output "exec_start" {
  description = "The command line the unit runs."
  value       = "/opt/edgeshield/bin/edgeshield ${local.arguments[var.role]}"
}
