"""Model family: every architecture and named variant is registered by name and built with `create_model`."""

# Importing a model module registers its names.
from unetlab.models import fcn as _fcn  # noqa: F401
from unetlab.models import resnet_unet as _resnet_unet  # noqa: F401
from unetlab.models import unet as _unet  # noqa: F401
from unetlab.models.registry import create_model, list_models, register_model, register_variant, variant_of
from unetlab.models.unet import UNet

__all__ = ["UNet", "create_model", "list_models", "register_model", "register_variant", "variant_of"]
