"""Producers: the CLI, the beat schedule and backend events enqueue commands for workers."""
