"""mmfuse's built-in plugins (this folder installs as the package ``mmfuse_plugins``; the plugin
host that loads them is ``mmfuse.plugin_host``, see docs/architecture.md "Three names that look alike").

Each sub-package is one component family, registered through the ``mmfuse`` entry-point group
exactly like a third-party plugin. A family's ``__init__`` holds the pydantic config classes and
the ``@hookimpl`` registration and imports no torch; the modules beside it hold the torch code and
are imported only when a recipe uses one of their components.
"""
