"""The workflow's words, with no dependencies, so the command line can offer
them without loading the store: the agreement's kinds of breach and the
states a case goes through (controller.workflow.ladder runs the machine)."""

# The agreement's kinds of breach, with the clauses that define them and say what to do.
KINDS = {
    "illegal_content": "二, 七.1",
    "network_attack": "三.1, 七.2",
    "virus": "三.2, 七.3",
    "spam": "三.3, 七.4",
    "false_filing": "十",
}
SEVERITIES = ("normal", "severe")

OPEN, WARNED, REMEDIATING, RESOLVED, ESCALATED = "open", "warned", "remediating", "resolved", "escalated"
STATES = (OPEN, WARNED, REMEDIATING, RESOLVED, ESCALATED)
# the state machine: from -> the states a case may go to
TRANSITIONS = {
    OPEN: {WARNED, REMEDIATING, ESCALATED, RESOLVED},
    WARNED: {REMEDIATING, ESCALATED, RESOLVED},
    REMEDIATING: {WARNED, ESCALATED, RESOLVED},   # back to warned: it happened again before the case closed
    ESCALATED: {RESOLVED},                        # an admin terminates the tenant, or closes the case
    RESOLVED: set(),
}
