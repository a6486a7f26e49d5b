"""Running 24/7: logs, systemd notify, metrics, audit trail, drift watch."""
