import pathlib

import pytest

from einsearch.search import RunConfig
from einsearch.search.cluster import ray_session

TINY_SPACE = str(pathlib.Path(__file__).parent.parent / "data" / "search" / "tiny.toml")
TINY_TASK = "mqar:vocab=32,seq_len=16,pairs=2,train=256,val=32,test=32"


def tiny_config(**changes) -> RunConfig:
    base = dict(
        task=TINY_TASK, space=TINY_SPACE, strategy="random", trials=4, trial_budget="3steps", scheduler="fifo",
        workers=2, executor="inline", d_model=16, layers=1, seed=0, finalists=0,
    )  # fmt: skip
    return RunConfig(**{**base, **changes})


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test session (starting one takes seconds), started as
    `einsearch run` starts it: token authentication on, a private temp folder."""
    import ray

    with ray_session(workers=2):
        yield ray
