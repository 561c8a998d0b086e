"""Pushing policy from the controller to the fleet (issue 11): the node
registry (one client certificate per node, revocable), the distribution
server that sends each revision as a signed snapshot or delta and records
what every node applied, and the reports agents send back (incidents,
evidence manifests, counter summaries)."""
