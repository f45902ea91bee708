"""f2pipe: the command line and the operations tooling (migrations, demo fleet, local servers)."""
