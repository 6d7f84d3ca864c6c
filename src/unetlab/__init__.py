"""unetlab: U-Net semantic segmentation."""
__version__ = "0.1.0"
