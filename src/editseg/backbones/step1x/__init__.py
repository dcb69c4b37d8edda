"""Step1X-Edit family (filled in below)."""
