"""The outgoing side: results sent to the configured destinations, with retry and their state in the ledger."""
