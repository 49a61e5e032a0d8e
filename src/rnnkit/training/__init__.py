"""Training: the loop, and the model directory it writes."""
