"""A name -> object registry that the packages providing the objects fill themselves.

``lib`` is the ground floor and never imports a method package. A method package (``fgfa``,
``lstm_ssd``, ``m2det`` or a user's own) registers what it provides when it is imported, and a
registry imports the providers it knows of on first use: the modules named by the Python entry
points of its group (``setup.py``: ``entry_points={"videodet.families": [...]}``, so an installed
package of a user plugs in without touching this project) and the modules listed in the
environment variable ``VIDEODET_PLUGINS`` (comma-separated, for code that is not installed).
This is the pattern of detectron2's registries and its ``projects/``.
"""
import importlib
import logging
import os
from importlib import metadata

PLUGINS_ENV = "VIDEODET_PLUGINS"

log = logging.getLogger("lib.registry")


class UnknownNameError(ValueError):
    """No object of that name is registered (the message lists the known names)."""


class Registry:
    """``register`` objects under a name; ``get(name)`` loads the providers first when needed."""

    def __init__(self, what, entry_point_group=None):
        self.what = what
        self.group = entry_point_group
        self._objects = {}
        self._plugins_loaded = False
        self._plugin_errors = {}

    def register(self, obj=None, name=None):
        """Register ``obj`` under ``name`` (default: ``obj.name``); usable as a class decorator.
        Registering another object under a taken name is an error (two providers of one name)."""
        def add(item):
            key = name or getattr(item, "name", None)
            if not key:
                raise ValueError(f"{self.what}: {item!r} has no name to register it under")
            known = self._objects.get(key)
            if known is not None and known is not item and type(known) is not type(item):
                raise ValueError(f"{self.what} {key!r} is registered twice: {known!r} and {item!r}")
            self._objects[key] = item
            return item
        return add if obj is None else add(obj)

    def load_plugins(self):
        """Import the modules of the entry-point group and of $VIDEODET_PLUGINS (once).

        A provider that fails to import is logged and remembered, so that asking for one of its
        names says why it is missing instead of only "unknown"."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        modules = []
        if self.group:
            for entry in metadata.entry_points(group=self.group):
                modules.append((entry.name, entry.value.split(":")[0]))
        for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
            modules.append((module, module))
        for label, module in modules:
            try:
                importlib.import_module(module)
            except Exception as err:  # noqa: BLE001 - one broken provider must not hide the others
                self._plugin_errors[label] = f"{module}: {type(err).__name__}: {err}"
                log.warning("%s provider %s could not be imported (%s: %s)", self.what, module,
                            type(err).__name__, err)

    def get(self, name):
        if name not in self._objects:
            self.load_plugins()
        if name not in self._objects:
            known = ", ".join(sorted(self._objects)) or "none"
            why = f"; {name} failed to load: {self._plugin_errors[name]}" if name in self._plugin_errors else ""
            hint = ("" if self._objects else
                    f" (no provider found: install the project with `pip install -e .` / `sh init.sh` so its "
                    f"'{self.group}' entry points exist, or name provider modules in ${PLUGINS_ENV})")
            raise UnknownNameError(f"unknown {self.what} {name!r}; known: {known}{why}{hint}")
        return self._objects[name]

    def names(self):
        self.load_plugins()
        return sorted(self._objects)

    def __contains__(self, name):
        self.load_plugins()
        return name in self._objects
