"""Backend processes: spawn, wait for health, load, queue requests, keep-alive, evict, restart."""
