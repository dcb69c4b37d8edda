"""The training wing: methods that learn (RLFseg). Imports only the core."""
