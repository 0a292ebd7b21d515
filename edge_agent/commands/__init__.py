"""One module per `edge-agent` subcommand; each defines `register(subparsers)`."""
