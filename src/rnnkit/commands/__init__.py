"""The `rnnkit` subcommands, one module each (a module may add a group of related commands)."""
