"""Streaming attention probes: the recorder (:mod:`.recorder`) and the diffusers processor plumbing (:mod:`.processors`)."""
