"""f2pipe simulator: simulated F2 Smart Controllers and the load generator."""
