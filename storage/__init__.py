"""The database, the event log, the projections, backups and snapshots. No Discord here."""
