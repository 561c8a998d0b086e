"""The DPDK engine: the XDP datapath's own parse, verdict and accounting
code run by DPDK poll loops (native/dpdk/, bound as agent._dpdk), for NICs
or hosts where XDP cannot run natively. Same policy document, same compiled
tables, same verdict reasons and counters as the XDP path."""
