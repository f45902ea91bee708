"""`f2pipe dev`: the whole pipeline on one machine, without Docker (see docs/development.md)."""
