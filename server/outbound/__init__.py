"""Requests Parley makes to integrators' servers: where they may go, event webhooks."""
