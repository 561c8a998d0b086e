"""edgewarden controller: the central service that holds tenants, block
lists, the audit trail and the enforcement workflow, and pushes policy to
the fleet. It imports agent.policy (pure Python) and the wire protocol,
never the BPF datapath, so it runs on hosts with no BPF."""
