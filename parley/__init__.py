"""Parley: a server for shared, multi-user AI sessions.

One import package over the repository's folders: ``parley.server`` (the I/O
shell), ``parley.session`` (the pure session core), ``parley.authz`` (permissions)
and ``parley.migrations`` (Alembic). Each is a link to its folder at the top."""
