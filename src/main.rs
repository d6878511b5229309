//! `occ-init` binary entry point: a thin shell around [`occ_init::run`].

fn main() {
    std::process::exit(occ_init::run());
}
