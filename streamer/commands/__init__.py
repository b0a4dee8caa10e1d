"""One module per subcommand: each defines HELP, add_arguments(parser) and main(args)."""
