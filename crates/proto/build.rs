fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/ctrl.proto");
    tonic_prost_build::configure().compile_protos(&["proto/ctrl.proto"], &["proto"])?;
    Ok(())
}
