"""Sparse-autoencoder interpretability pipeline for an MNIST MLP (library behind the DVC stages)."""
