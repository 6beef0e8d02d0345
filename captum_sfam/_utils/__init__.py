"""Plumbing shared by every member: checks, formatting, capture, maps, the engine."""
