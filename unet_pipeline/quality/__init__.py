"""Per-case quality estimate without a reference: review signals, their calibration to Dice, the review list."""
