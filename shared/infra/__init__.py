"""What every service runs on: typed config from the environment, structured logs, metrics, Redis clients and
idempotent slot scripts, retries, circuit breakers, coalescing, the clock, and the HTTP server with its pieces.
"""
