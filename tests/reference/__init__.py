"""Reference implementations the tests compare against: PyTorch ports and NumPy transcriptions."""
