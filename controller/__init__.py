"""The central controller: tenant registry, block lists, operators and their
tokens, the hash-chained audit trail, policy revisions and the enforcement
workflow (controller.workflow), served as an HTTP JSON API (controller.api)
and driven by the `edgewarden` CLI (controller.cli). It imports agent.policy
and the native prefix compiler, never the BPF datapath."""
