"""The household world: a generated corpus in which a word far back decides the last word, memory
over distance measured on it, and the demo that shows both."""
