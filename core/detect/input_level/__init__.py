"""Input-level detectors: STRIP, feature space, SCALE-UP, TeCo, masking, the clean reference; calibrated by the scanner."""
