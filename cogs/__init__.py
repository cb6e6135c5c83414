"""Discord-facing handlers, one cog per user-facing area."""
