"""The code file of the MLflow model (models-from-code): MLflow copies it into the model and runs
it at load time; it names the model class, so nothing of ours is pickled (see pyfunc.py)."""

from mlflow.models import set_model

from leanhpo.export.pyfunc import ExportPyfunc

set_model(ExportPyfunc())
