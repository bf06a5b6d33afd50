"""insite-console: backup, restore and DR drills for PostgreSQL, Redis and file trees."""
__version__ = "0.1.0"
