"""The bot's domain logic between the cogs and storage."""
