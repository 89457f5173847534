"""The pushcluster client for business systems: ``from pushcluster.client import PushClient``."""
