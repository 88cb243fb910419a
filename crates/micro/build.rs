//! Compiles the core protos.

fn main() {
    micro_build::compile(&["../../proto/registry.proto"], &["../../proto"]).expect("compiling the core protos");
}
