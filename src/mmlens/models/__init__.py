"""Loading models and the per-family adapters that know their architecture."""
