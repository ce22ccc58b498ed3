"""The ``scanstream`` subcommands, one module each: ``register(sub)`` adds its parser, ``cmd_*`` runs it."""
