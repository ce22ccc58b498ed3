"""Who may use the console and its API: users and roles, passwords, tokens, sessions, CSRF, sign-in throttling."""
