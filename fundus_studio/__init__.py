"""Fundus Studio."""
