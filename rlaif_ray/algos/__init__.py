"""Drivers: one thin module per job; each reads like a one-machine program."""
