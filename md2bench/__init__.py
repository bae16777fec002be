"""md2bench: reproduce, extend and trust the Monodepth2 ablation study."""

__version__ = "0.1.0"
