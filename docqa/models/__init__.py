"""Models: checkpoints to encoders and generators (loading, retriever, answer generator, CPU engines)."""
