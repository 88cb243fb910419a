//! Compiles the core protos.

fn main() {
    let protos = [
        "registry", "store", "events", "broker", "config", "sync", "auth", "runtime", "usage", "domains", "cluster",
        "license", "network",
    ]
    .map(|p| format!("../../proto/{p}.proto"));
    micro_build::compile(&protos, &["../../proto"]).expect("compiling the core protos");
}
