//! `occ-test-child`: the fault-injection child the integration tests and benchmarks run
//! under occ-init (exit codes, signal masks, orphans, SIGCHLD storms, signal echo).
fn main() {}
