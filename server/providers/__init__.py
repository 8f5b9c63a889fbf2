"""Model providers: implementations of ``session.model.ModelProvider``."""
