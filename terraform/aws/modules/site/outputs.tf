output "vpc_id" {
  description = "The site's VPC id (for peering)."
  value       = aws_vpc.this.id
}

output "public_ips" {
  description = "Node name => Elastic IP, for nodes the public reaches."
  value       = { for name, eip in aws_eip.node : name => eip.public_ip }
}

output "instance_ids" {
  description = "Node name => EC2 instance id."
  value       = { for name, i in aws_instance.node : name => i.id }
}
