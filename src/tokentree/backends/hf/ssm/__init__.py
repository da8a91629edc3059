"""Tree verification for state-space models and SSM/attention hybrids (STree)."""
