"""The edge tier: the durable outbox of purges, their delivery (Celery tasks) and the purgers."""
