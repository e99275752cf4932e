"""The subcommands of `grm-jax`: each module defines its commands' handlers and, beside them,
`add_commands(sub)`, which adds their parsers to the command line (`grm_jax.cli`)."""
