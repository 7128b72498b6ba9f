"""The command line: one module per `lymphnode-mtl` command."""
