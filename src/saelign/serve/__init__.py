"""`saelign serve`: a local web page to steer and audit a model live (the `serve` extra: fastapi, uvicorn)."""

from saelign.serve.config import Limits, ServeConfig
from saelign.serve.session import Session, load_session

__all__ = ["Limits", "ServeConfig", "Session", "create_app", "load_session"]


def __getattr__(name: str) -> object:
    if name == "create_app":  # FastAPI is imported only when the app is built
        from saelign.serve.app import create_app

        return create_app
    raise AttributeError(name)
