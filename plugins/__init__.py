"""Built-in model plugins, one subpackage each (network, handler, train script, weights)."""
