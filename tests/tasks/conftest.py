import pytest


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Generated data goes to a fresh temporary folder, never to the user's cache."""
    monkeypatch.setenv("EINSEARCH_CACHE", str(tmp_path / "cache"))
