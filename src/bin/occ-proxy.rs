//! `occ-proxy`: occ-init's authenticating reverse proxy. PID 1 starts it as an unprivileged
//! user with the public listening socket as fd 3; see docs/proxy.md.

fn main() {
    std::process::exit(occ_init::proxy::main());
}
