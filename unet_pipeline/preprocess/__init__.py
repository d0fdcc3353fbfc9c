"""Preprocessing: orientation, in-plane resampling, CT normalisation, the slice index."""
