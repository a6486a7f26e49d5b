"""A crop to a verdict: the bundle format, the int8 model, the guard and the judge."""
