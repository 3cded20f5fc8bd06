"""Production monitoring: prediction log, image samples, feedback, the release reference, drift verdicts."""
