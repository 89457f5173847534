"""Load tests for the push cluster: ``bench_e2e`` (figures over real processes) and a locustfile."""
