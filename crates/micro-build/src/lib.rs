//! Build-script helper for Micro services: compiles `.proto` files with a pure-Rust
//! compiler (no system `protoc`), generates tonic/prost code, and writes the encoded
//! descriptor set that the service publishes for reflection, JSON transcoding and schemas.
//!
//! In `build.rs`:
//!
//! ```no_run
//! micro_build::compile(&["proto/helloworld.proto"], &["proto"]).expect("compile protos");
//! ```
//!
//! In the service: `tonic::include_proto!("helloworld")` for the code and
//! `micro::include_descriptor!()` for the descriptor set.

use prost::Message;
use std::path::{Path, PathBuf};

/// The file name of the descriptor set written to `OUT_DIR`.
pub const DESCRIPTOR_FILE: &str = "micro_descriptor.bin";

/// Why a proto build failed.
#[derive(Debug)]
pub enum Error {
    /// The protos did not parse or resolve.
    Proto(Box<protox::Error>),
    /// Writing generated files failed.
    Io(std::io::Error),
    /// `OUT_DIR` is not set (not running in a build script).
    NoOutDir,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Proto(e) => write!(f, "proto error: {e}"),
            Error::Io(e) => write!(f, "writing generated code: {e}"),
            Error::NoOutDir => write!(f, "OUT_DIR is not set; call micro_build from build.rs"),
        }
    }
}

impl std::error::Error for Error {}

/// Compiles `protos` (searched in `includes`) into `OUT_DIR`: one `<package>.rs` per
/// package with messages, clients and servers, plus [`DESCRIPTOR_FILE`].
pub fn compile(protos: &[impl AsRef<Path>], includes: &[impl AsRef<Path>]) -> Result<(), Error> {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or(Error::NoOutDir)?);
    compile_to(protos, includes, &out)
}

/// Like [`compile`] with an explicit output directory.
pub fn compile_to(protos: &[impl AsRef<Path>], includes: &[impl AsRef<Path>], out: &Path) -> Result<(), Error> {
    for p in protos {
        println!("cargo:rerun-if-changed={}", p.as_ref().display());
    }
    for p in includes {
        println!("cargo:rerun-if-changed={}", p.as_ref().display());
    }
    let fds = protox::compile(protos, includes).map_err(|e| Error::Proto(Box::new(e)))?;
    std::fs::write(out.join(DESCRIPTOR_FILE), fds.encode_to_vec()).map_err(Error::Io)?;
    tonic_prost_build::configure().out_dir(out).emit_rerun_if_changed(false).compile_fds(fds).map_err(Error::Io)
}
