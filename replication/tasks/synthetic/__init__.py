"""A small synthetic language (a seeded sparse bigram model): the fast task of the tests and benchmarks."""
