"""Human in the loop: the review queue built from production's samples, labels, and their commit into the catalog."""
