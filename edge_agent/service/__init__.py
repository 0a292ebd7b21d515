"""Service plumbing: supervisor, systemd notify and watchdog, logging, metrics, status
and its rendering."""
