"""f2pipe processor: the Faust app that resolves ids and decodes frames."""
