"""rlaif-ray: RLAIF on Ray."""
__version__ = "0.1.0"
