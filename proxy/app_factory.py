"""Builds the proxy app from a config: the gateway plus the extensions the config asks for."""

from __future__ import annotations

from proxy.config import Config
from proxy.gateway import Extension, Gateway, create_app

#: Extension factories, each `(config) -> Extension | None`, added as features land.
EXTENSION_FACTORIES: tuple[str, ...] = (
    "proxy.screening_setup.pipeline_extension",
)


def build_app(config: Config) -> Gateway:
    import importlib

    extensions: list[Extension] = []
    for dotted in EXTENSION_FACTORIES:
        module_name, _, attr = dotted.rpartition(".")
        factory = getattr(importlib.import_module(module_name), attr)
        extension = factory(config)
        if extension is not None:
            extensions.append(extension)
    return create_app(config, extensions=tuple(extensions))
