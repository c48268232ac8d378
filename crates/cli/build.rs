//! Embeds libtorch's directory as an rpath so tests and binaries run without LD_LIBRARY_PATH,
//! and keeps libtorch's CUDA library in the `mvp` binary when the CUDA build is installed.
//!
//! torch-sys asks for `-ltorch_cuda`, but nothing in our code calls into that library, so a
//! linker that drops unused shared libraries (`--as-needed`, the default on Debian and Ubuntu)
//! leaves it out, and libtorch then reports no CUDA device even on a GPU machine (tch-rs issues
//! #907, #980). Linking it with `--no-as-needed` makes it load with the binary. With the CPU
//! build (no `libtorch_cuda.so`) only the rpath is added.

fn main() {
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    // The folder's mtime changes when `make setup` installs the other variant.
    println!("cargo:rerun-if-changed={dir}");
    if std::path::Path::new(&dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={dir}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
