"""Load benchmark for Courier: real sockets, the wire protocol, one JSON line per workload."""
