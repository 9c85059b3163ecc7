"""Fine-tune, publish and serve pretrained image classifiers on folders of labeled photos."""

__version__ = "0.1.0"
