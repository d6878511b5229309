//! Build script: records version, git commit, build time and rustc for `occ-init --version`.
fn main() {
    // Without git2 shadow-rs falls back to the `git` command, or leaves the commit empty
    // when built outside a checkout; both are fine for a version string.
    if let Err(e) = shadow_rs::ShadowBuilder::builder().build() {
        println!("cargo:warning=shadow-rs: {e}");
    }
}
