"""The SQLite store: schema and migrations, the batch writer, the queries."""
