"""The deployment test: real PostgreSQL, PgBouncer, HAProxy and payrail processes."""
