"""The ledger (SQLite): the record of instances, series, studies, jobs and deliveries, and the views read from it."""
