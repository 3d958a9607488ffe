"""Decision support and note drafting on the normalized stream."""
