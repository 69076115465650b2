"""The `gaudi3` command line: the operator command and the plugin sub-commands."""
