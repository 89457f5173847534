"""The project's shared library: wire protocol, errors, config, logs, metrics and data access."""
