//! `sqlx::migrate!` embeds the files under `migrations/` at compile time; without this, a new
//! or edited migration would not rebuild the crate and the binary would carry the old set.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
