"""The `edgeshield` command and `edgeshield up`: the roof, which may import every role."""
