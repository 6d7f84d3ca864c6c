"""Scoring a trained run on labelled data: metrics, threshold sweep, report and figures."""

from unetlab.evaluation.evaluate import evaluate

__all__ = ["evaluate"]
