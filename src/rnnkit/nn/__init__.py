"""Recurrent cells and the layer that unrolls them."""
