"""Certificate mathematics: atoms, Gaussian, discrete and hybrid bounds. No model code."""
