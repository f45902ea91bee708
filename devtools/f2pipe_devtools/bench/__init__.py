"""`f2pipe bench`: measurements that print a table and write JSON, the same way every time."""
