"""webhooks: tells business systems what became of their messages and who went on- or offline, as signed HTTP posts (Standard Webhooks)."""
