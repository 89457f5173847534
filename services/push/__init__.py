"""push: holds browsers' websockets, keeps its users' routes alive in Redis, writes the batches dispatch forwards and records the acks."""
