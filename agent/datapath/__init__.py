"""The datapath library: load and attach the XDP program, adopt its pinned
maps, apply compiled policies as diffs and read counters. The CLI, the demo
and (later) the daemon are thin shells over it."""
