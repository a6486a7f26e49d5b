"""The operator's page (`edge-hmi`): its own process, reading what the daemon leaves behind."""
