"""The PostgreSQL backend of the memory store (storage/store.py), for several bot processes sharing one database."""
