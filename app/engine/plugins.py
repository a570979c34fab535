"""Loading attack plugins in a worker: Python entry points in the ``secev.attacks`` group.

A plugin is a subclass of ``app.engine.attacks.Attack`` implementing ``perturb`` (one epsilon,
one batch), the same step as the built-ins, so the sweep, its checkpoints, the fp32 re-check,
the reliability checks and the reports apply to it unchanged. Its class attribute ``catalog``
(an ``app.attack_catalog.Attack``) declares its name, title, description, paper and parameters;
the entry point's name must be that name. A plugin that fails to import, collides with a
built-in, or declares a bad parameter table is rejected with a logged reason; the worker starts
anyway and offers the others.
"""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint, entry_points

from .. import attack_catalog as catalog
from ..plugin_catalog import GROUP, check_entry
from . import attacks

log = logging.getLogger(__name__)


def _load_one(ep: EntryPoint) -> tuple[type[attacks.Attack], catalog.Attack]:
    try:
        cls = ep.load()
    except Exception as exc:  # any import-time failure of third-party code: reject it, keep the worker
        raise ValueError(f"import failed: {type(exc).__name__}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, attacks.Attack)):
        raise ValueError(f"{ep.value} is not a subclass of app.engine.attacks.Attack")
    if cls.perturb is attacks.Attack.perturb:
        raise ValueError(f"{ep.value} does not implement perturb")
    entry = check_entry(getattr(cls, "catalog", None))
    if entry.name != ep.name:
        raise ValueError(f"its catalog name {entry.name!r} differs from its entry-point name")
    return cls, entry


def discover() -> tuple[dict[str, tuple[type[attacks.Attack], catalog.Attack]], dict[str, str]]:
    """Every plugin installed, loaded and checked: ``(loaded, rejected)``, rejected mapping a name to
    the reason. Two packages declaring the same name: both are rejected (which one runs would be
    an accident of the install order)."""
    found = list(entry_points(group=GROUP))
    names = [ep.name for ep in found]
    loaded: dict[str, tuple[type[attacks.Attack], catalog.Attack]] = {}
    rejected: dict[str, str] = {}
    for ep in found:
        try:
            if ep.name in catalog.BY_NAME:
                raise ValueError("its name is a built-in attack's")
            if names.count(ep.name) > 1:
                raise ValueError("several installed packages declare this name")
            loaded[ep.name] = _load_one(ep)
        except ValueError as exc:
            rejected[ep.name] = str(exc)
            log.error("attack plugin %r (%s) rejected: %s", ep.name, ep.value, exc)
    return loaded, rejected


def install() -> list[catalog.Attack]:
    """Discover the plugins and make ``attacks.build`` know them (before the work-horses fork);
    returns the catalog entries to publish."""
    loaded, _ = discover()
    for name, (cls, _entry) in loaded.items():
        attacks.ATTACKS[name] = cls
        log.info("attack plugin %r loaded from %s", name, cls.__module__)
    return [entry for _cls, entry in loaded.values()]
