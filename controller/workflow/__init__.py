"""The enforcement workflow of the security agreement (clauses 七, 八, 十):
incidents grouped into cases, the ladder of warnings, deadlines, suspensions,
blocks and the watch list as rules data, notifications by e-mail and webhook,
and termination only on an admin's confirmation. A library over the
controller's store, audit chain and revisions; its HTTP routes are
controller.workflow.api, its commands controller.workflow.cli."""

from controller.workflow.clock import Clock, ManualClock, SystemClock
from controller.workflow.ladder import IncidentReport, Workflow
from controller.workflow.rules import DEFAULT_RULES, RuleBook, Rules, RulesError, load_rules

__all__ = ["Clock", "DEFAULT_RULES", "IncidentReport", "ManualClock", "RuleBook", "Rules", "RulesError",
           "SystemClock", "Workflow", "load_rules"]
