"""unetlab: U-Net semantic segmentation, from seismic salt bodies to your own image/mask folders."""

from unetlab._version import __version__

from unetlab.api import (  # noqa: E402
    Callback, Config, EnsemblePredictor, Predictor, TrainResult, bench_train, create_model, demo, evaluate, list_models, load_config,
    predict, train,
)

__all__ = ["Callback", "Config", "EnsemblePredictor", "Predictor", "TrainResult", "bench_train", "create_model", "demo", "evaluate",
           "list_models", "load_config", "predict", "train", "__version__"]
