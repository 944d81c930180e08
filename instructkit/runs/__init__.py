"""Runs on disk: atomic artifacts and manifests, content fingerprints of inputs, and the rule that reuses finished work and resumes killed work."""
