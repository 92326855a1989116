"""Thin gevent drivers around the sans-I/O core: accept -> intake -> route -> place -> splice."""
