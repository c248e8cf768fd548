"""Every pluggy hook that an mmfuse plugin may implement.

A plugin is a module (or object) whose functions are marked with :data:`mmfuse.hookimpl` and named
after one of the hooks below. Plugins are found through the ``mmfuse`` entry-point group; the
built-in plugins in ``mmfuse_plugins`` come through the same group.

Registration hooks receive a ``register`` callable and return nothing. The host fills in the
provenance (plugin, distribution, version) of everything registered, so a plugin never says who it
is. This module imports no torch: registration must stay cheap.
"""

from __future__ import annotations

from typing import Protocol

import pluggy

__all__ = [
    "hookspec",
    "hookimpl",
    "RegisterComponent",
    "mmfuse_register_encoders",
    "mmfuse_register_fusions",
    "mmfuse_register_tasks",
    "mmfuse_register_readers",
    "mmfuse_register_callbacks",
]

PROJECT_NAME = "mmfuse"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: The one public marker for plugin hook implementations.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class RegisterComponent(Protocol):
    """The ``register`` callable handed to every registration hook.

    Arguments:
        name: namespaced component name, ``"<namespace>/<short>"`` (``"acme/tabular"``). The short
            part becomes an alias when no other component of the same kind uses it.
        builder: ``"package.module:callable"`` (imported only when a recipe uses the component) or
            the callable itself. It is called as ``builder(config, **context)``; the context each
            kind receives is documented on its hook.
        config: a pydantic model class that validates the component's own recipe parameters.
            It must be importable without torch.
        description: one line shown by ``mmfuse plugins``.
        aliases: extra short names.
    """

    def __call__(
        self,
        name: str,
        *,
        builder: object,
        config: type | None = None,
        description: str = "",
        aliases: tuple[str, ...] = (),
    ) -> None: ...


@hookspec
def mmfuse_register_encoders(register: RegisterComponent) -> None:
    """Register encoder components (one per input modality family).

    Runs once when the registry is built. The builder is called as ``builder(config)`` and must
    return an :class:`mmfuse.contracts.Encoder` (an ``nn.Module`` whose ``forward(inputs)`` returns
    an :class:`mmfuse.contracts.EncoderOutput` and whose ``preprocessor()`` returns the CPU-side
    :class:`mmfuse.contracts.Preprocessor`). Return value: none.
    """


@hookspec
def mmfuse_register_fusions(register: RegisterComponent) -> None:
    """Register fusion heads.

    Runs once when the registry is built. The builder is called as
    ``builder(config, input_dims=dict[str, int])`` (encoder name to its ``output_dim``) and must
    return an :class:`mmfuse.contracts.FusionHead`. Return value: none.
    """


@hookspec
def mmfuse_register_tasks(register: RegisterComponent) -> None:
    """Register tasks (a head, its loss and its metrics).

    Runs once when the registry is built. The builder is called as
    ``builder(config, fused_dim=int, encoder_dims=dict[str, int])`` and must return an
    :class:`mmfuse.contracts.Task`. The config class may define ``fit_targets(values) -> config``
    to learn from the training targets (a label vocabulary) before the head is built.
    Return value: none.
    """


@hookspec
def mmfuse_register_readers(register: RegisterComponent) -> None:
    """Register manifest readers (JSONL, CSV, ...), selected by ``data.format`` or file extension.

    Runs once when the registry is built. The builder is called as ``builder(config)`` and must
    return a callable ``read(path) -> Iterable[tuple[int, dict]]`` yielding (line number, row).
    The short name doubles as the file extension it handles. Return value: none.
    """


@hookspec
def mmfuse_register_callbacks(register: RegisterComponent) -> None:
    """Register training callbacks that a recipe can name under ``callbacks:``.

    Runs once when the registry is built. The builder is called as ``builder(config)`` and must
    return an :class:`mmfuse.engine.callbacks.Callback`. Callbacks fire only when a recipe names
    them, never because a plugin is installed. Return value: none.
    """
