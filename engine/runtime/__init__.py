"""Model backends: one interface (initialize / execute / finalize), several runtimes."""
