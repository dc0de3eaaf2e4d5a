//! Links the trainer so that it runs without `LD_LIBRARY_PATH`.
//!
//! torch-sys tells us where libtorch's shared libraries are (`DEP_TCH_LIBTORCH_LIB`). The
//! binaries get two run paths: one relative to the binary, for a wheel installed into the same
//! environment as torch (`<env>/bin/rust-trainer` next to `<env>/lib/pythonX.Y/site-packages`),
//! and the absolute folder used at build time, for a binary run from the build folder.
//!
//! The CUDA part of libtorch is linked with `--no-as-needed`: nothing in the trainer names a
//! symbol from it, and without it the linker drops the library, so CUDA would never be found.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    let lib = Path::new(&lib);

    let components: Vec<_> = lib.components().map(|c| c.as_os_str().to_string_lossy()).collect();
    if let Some(pos) = components.iter().rposition(|c| c.starts_with("python")) {
        // `.../lib/python3.11/site-packages/torch/lib` -> `$ORIGIN/../lib/python3.11/...`
        if pos > 0 && components[pos - 1] == "lib" {
            let tail = components[pos - 1..].join("/");
            println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../{tail}");
        }
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());

    // The wheel's `torch/version.py` names the libtorch it ships; `info` reports it.
    let version_py = lib.join("../version.py");
    println!("cargo:rerun-if-changed={}", version_py.display());
    let version = std::fs::read_to_string(&version_py)
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|line| line.starts_with("__version__"))?;
            let value = line.rsplit('=').next()?.trim().trim_matches(['\'', '"']);
            Some(value.to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=RUST_TRAINER_LIBTORCH_VERSION={version}");

    // A few lines of C++ for what tch does not expose (autocast's dtype).
    println!("cargo:rerun-if-changed=csrc/autocast.cpp");
    let include = lib.join("../include");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .file("csrc/autocast.cpp")
        .compile("rust_trainer_autocast");

    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
