"""Storage Commitment Push Model SCP on the router's AE (local, forwarded, upstream)."""
