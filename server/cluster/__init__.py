"""Cluster mode: several Parley nodes on one PostgreSQL (``PARLEY_CLUSTER=1``).

``lease`` (who runs a session, and the fence on its writes), ``tail`` (a replica reads the
update log), ``forwarding`` (commands sent to the running node), ``listener`` (LISTEN/NOTIFY)
and ``node`` (this process as one node: ties them to the room registry). Off by default:
a single node on SQLite or PostgreSQL starts none of it.
"""
