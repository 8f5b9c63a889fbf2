"""The session core: document schema, prompt lifecycle, ordering queue, context building.

Everything here is pure: no sockets, no database, no clock reads except through arguments.
"""
