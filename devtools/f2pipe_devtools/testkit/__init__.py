"""Test kits: fleet samples, the ledger oracle, example payloads (never in the image)."""
