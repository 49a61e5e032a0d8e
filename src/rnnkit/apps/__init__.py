"""Applications of recurrent networks, each a package on the shared engine."""
