//! Compiles the helloworld proto (no system protoc needed).

fn main() {
    micro_build::compile(&["proto/helloworld.proto"], &["proto"]).expect("compiling helloworld.proto");
}
