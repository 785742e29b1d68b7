"""Turnaround analytics computed from the case event log (principle 1)."""
