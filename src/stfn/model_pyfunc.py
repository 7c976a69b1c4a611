"""The registered model's code, logged with MLflow's models-from-code (`python_model=<this file>`):
MLflow stores this file beside the model and runs it when the model is loaded, instead of
unpickling a Python object. A pyfunc taking the raw inputs of the dataset contract: `series`
(N, T, C) float32 with NaN for missing and `frames` (N, F, C, H, W) in the dataset's dtype ->
class probabilities (N, K), or values (N,) in the target's unit.

It imports only `stfn.inference` (and through it `models`, `transforms`, `config`, `errors`):
those files travel in the model's folder (`code/stfn/`, MLflow's `code_paths`), so the model
loads where this project is not installed."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from stfn.inference import InputError, Predictor


class STFNModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.meta = json.loads(Path(context.artifacts["features"]).read_text())
        self.predictor = Predictor.load(context.artifacts["checkpoint"], self.meta)
        # the reference statistics `stfn monitor` reads (models registered before monitoring existed have none)
        self.reference = context.artifacts.get("reference")

    def predict(self, context, model_input, params=None):
        try:
            return self.predictor.predict(model_input)
        except InputError as exc:  # a scoring server answers 400 with this message, not 500
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None


set_model(STFNModel())
