/* The datapath for kernels whose conntrack kfuncs libbpf cannot resolve
 * (no nf_conntrack, or nf_conntrack as a module and no CAP_SYS_ADMIN): the
 * same program with no conntrack call in it. The agent loads it there
 * (agent/datapath/program.py) and refuses policies that need conntrack. */
#define EW_WITHOUT_CONNTRACK 1
#include "edgewarden.bpf.c"
