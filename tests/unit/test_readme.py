"""The README's promises that a test can hold it to."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from gateway.config import GatewaySettings

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def _commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", README)


def test_ci_runs_the_readme_test_command() -> None:
    install_and_serve, install_and_test = _commands()[:2]
    assert install_and_serve.endswith("ttc-gateway serve")
    assert install_and_test in (REPO / ".ci" / "run").read_text().splitlines()


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        inner = getattr(annotation, "__args__", (annotation,))
        nested = [a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)]
        if nested:
            suffix = "[]" if getattr(annotation, "__origin__", None) is list else ""
            if type(None) in inner:  # an optional section is itself a setting
                keys.append(key)
            keys += _keys(nested[0], f"{key}{suffix}.")
        else:
            keys.append(key)
    return keys


def test_readme_documents_every_configuration_key() -> None:
    missing = [k for k in _keys(GatewaySettings) if f"`{k}`" not in README]
    assert not missing, f"configuration keys missing from the README table: {missing}"
