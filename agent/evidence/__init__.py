"""Sealed packet evidence: samples from the datapath's ring buffer written
to pcapng files (one set per incident), each sealed on close into an
append-only, hash-chained manifest, and the tools that list and verify them."""
