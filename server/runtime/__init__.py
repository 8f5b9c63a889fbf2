"""Loaded sessions: the one writer per session, its run loop, the command door."""
