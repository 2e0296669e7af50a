"""Helpers every part may use: safe file I/O, input checks, precision and attention choice, progress bars."""
