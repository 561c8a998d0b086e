"""edgewarden agent: XDP datapath control (agent.datapath), the policy
document (agent.policy), the reference model (agent.reference) and the
`edgewarden` command (agent.cli).
agent.policy is pure Python: the controller imports it on hosts without BPF."""
