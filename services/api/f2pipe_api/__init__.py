"""f2pipe api: the operator's control plane for the fleet registry (tokens, controllers, audit)."""
