//! Links the system's OpenBLAS when the `openblas` feature is on (Debian: libopenblas-dev).
//! openblas-src would do the same but drags a TLS downloader into every build.

fn main() {
    if std::env::var_os("CARGO_FEATURE_OPENBLAS").is_some() {
        println!("cargo:rustc-link-lib=dylib=openblas");
    }
}
