"""The registered model's code, logged with MLflow's models-from-code (`python_model=<this file>`):
MLflow stores this file beside the model and runs it when the model is loaded, instead of
unpickling a Python object. A pyfunc taking the raw inputs of the dataset contract: `series`
(N, T, C) float32 with NaN for missing and `frames` (N, F, C, H, W) in the dataset's dtype ->
class probabilities (N, K), or values (N,) in the target's unit. Needs `stfn` where it is served."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
from mlflow.models import set_model

from stfn.evaluation import softmax
from stfn.features import transform_frames, transform_series
from stfn.training import load_checkpoint, predict_arrays


class STFNModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.model, _ = load_checkpoint(context.artifacts["checkpoint"])
        self.meta = json.loads(Path(context.artifacts["features"]).read_text())

    def predict(self, context, model_input, params=None):
        stats = self.meta["stats"]
        series = transform_series(np.asarray(model_input["series"], np.float32), stats)
        frames = transform_frames(np.asarray(model_input["frames"]), stats)
        out, _ = predict_arrays(self.model, series, frames)
        if self.meta["task"] == "classification":
            return softmax(out).astype(np.float32)
        return (out[:, 0] * stats["target_std"] + stats["target_mean"]).astype(np.float32)


set_model(STFNModel())
