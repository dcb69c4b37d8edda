"""Components: thin ``from_pretrained`` wrappers around models that methods combine (SAM, CLIP, a VLM)."""
