"""Identities, roles, capabilities and client tokens. Pure: no I/O."""
