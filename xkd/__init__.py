"""xkd: XKD audio-visual pretraining (Sarkar & Etemad, AAAI 2024) as a training system."""

__version__ = "0.1.0"


def load_encoder(export_dir, modality: str, encoder: str = "teacher", device="cpu"):
    """An exported encoder and its preprocessing: see :func:`xkd.api.load_encoder` (imported lazily:
    ``import xkd`` stays light)."""
    from xkd.api import load_encoder as _load

    return _load(export_dir, modality, encoder, device)
