"""Package discovery for mmfuse's two source roots; everything else is in pyproject.toml.

``mmfuse/`` installs as ``mmfuse`` and ``plugins/`` installs as ``mmfuse_plugins`` (the built-in
plugins, registered through the same entry points as third-party ones). setuptools' declarative
``packages.find`` cannot install a folder under another name, so the packages of each root are
found here: a new sub-package (a folder with an ``__init__.py``) ships without editing any list.
"""

from setuptools import find_packages, setup

#: import name -> source folder
SOURCE_ROOTS = {"mmfuse": "mmfuse", "mmfuse_plugins": "plugins"}


def discovered_packages() -> list[str]:
    """Every package under each source root, named by its import path."""
    packages = []
    for name, folder in SOURCE_ROOTS.items():
        packages += [name, *(f"{name}.{sub}" for sub in find_packages(folder))]
    return packages


setup(package_dir=dict(SOURCE_ROOTS), packages=discovered_packages())
