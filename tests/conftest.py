import signal

import pytest
import torch

from apgrid.trainables.data import load_digits
from apgrid.trainables.models import build_model
from apgrid.trainables.training import Recipe
from tests.helpers import train_on_digits

SIGINT_AT_START = signal.getsignal(signal.SIGINT)  # before any test starts Ray or Tune


@pytest.fixture(autouse=True)
def no_ambient_tracking_uri(monkeypatch):
    """apgrid honours MLFLOW_TRACKING_URI when a spec sets none, and MLflow's fluent
    set_tracking_uri sets that variable: no test may leak it into the next one's grids."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")


@pytest.fixture(scope="session")
def digits():
    return load_digits()


@pytest.fixture(scope="session")
def trained(digits):
    """A digits CNN after 4 quick epochs of FGSM-RS training (eps 0.1)."""
    torch.manual_seed(0)
    model = build_model("digits-cnn", 1, 10, digits.mean, digits.std)
    train_on_digits(model, digits, Recipe(trainer="fgsm-rs", epochs=4, lr=0.05, batch_size=64))
    return model.eval()


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray cluster for the whole test session (ray.init costs seconds)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
