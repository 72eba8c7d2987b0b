"""xkd: XKD audio-visual pretraining (Sarkar & Etemad, AAAI 2024) as a training system."""

__version__ = "0.1.0"
