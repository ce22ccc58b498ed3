"""Models registered from configuration alone (``[[models]]`` entries): their selectors, handlers and file checks."""
