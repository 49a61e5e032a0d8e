"""Demonstrations built on the library: the household world of the seed's example."""
