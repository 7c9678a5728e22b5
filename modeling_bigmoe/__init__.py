"""modeling_bigmoe: generalisable multimodal face anti-spoofing as transformers models."""

__version__ = "0.1.0"
