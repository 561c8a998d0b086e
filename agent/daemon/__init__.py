"""The edge agent as a long-running daemon: attaches the datapath to the
configured interfaces, keeps the policy file enforced, accounts per-tenant
traffic, raises incidents and seals packet evidence. A thin shell over
agent.datapath; it never imports the lab tooling."""
