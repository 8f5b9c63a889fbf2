"""Persistence: the schema, the engines, and the rows of sessions, access and webhooks."""
