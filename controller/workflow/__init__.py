"""The enforcement workflow of the security agreement (clauses 七, 八, 十):
incidents grouped into cases, the ladder of warnings, deadlines, suspensions,
blocks and the watch list as rules data, notifications by e-mail and webhook,
and termination only on an admin's confirmation. A library over the
controller's store, audit chain and revisions; its HTTP routes are
controller.workflow.api, its commands controller.workflow.cli."""

import importlib

# Imported on first use (PEP 562): every `edgewarden` command line loads
# controller.workflow.cli, and the ladder's store and models (SQLAlchemy,
# pydantic) would add about 0.3 s to each, agent commands included.
_EXPORTS = {
    "Clock": "clock", "ManualClock": "clock", "SystemClock": "clock",
    "IncidentReport": "ladder", "Workflow": "ladder",
    "DEFAULT_RULES": "rules", "RuleBook": "rules", "Rules": "rules", "RulesError": "rules", "load_rules": "rules",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
