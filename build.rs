//! Generates the Jaeger remote-storage API (proto/jaeger) with protox, a protobuf
//! compiler in Rust, so building needs no `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/jaeger/storage/v2/trace_storage.proto",
        "proto/jaeger/storage/v2/dependency_storage.proto",
        "proto/jaeger/storage/v2/capabilities.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    // The OTLP messages the API returns are opentelemetry-proto's Rust types (the
    // extern path below), so the compiler only needs their names: a stub stands in for
    // OTLP's trace.proto.
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let stub = out.join("otlp-stub");
    let dir = stub.join("opentelemetry/proto/trace/v1");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("trace.proto"),
        "syntax = \"proto3\";\npackage opentelemetry.proto.trace.v1;\nmessage TracesData {}\n",
    )?;
    let fds = protox::Compiler::new([PathBuf::from("proto"), stub.clone()])?
        .include_imports(true)
        .open_files(files)?
        .file_descriptor_set();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .extern_path(
            ".opentelemetry.proto.trace.v1",
            "::opentelemetry_proto::tonic::trace::v1",
        )
        .compile_fds(fds)?;

    // The OTLP/gRPC receiver's TraceService, whose requests reach the receiver as the
    // bytes that came in (`RawCodec`): the pipeline decodes them once, and a malformed
    // one is still there to land in dead_letters.
    let dir = stub.join("opentelemetry/proto/collector/trace/v1");
    std::fs::create_dir_all(&dir)?;
    let service = dir.join("trace_service.proto");
    std::fs::write(
        &service,
        "syntax = \"proto3\";\npackage opentelemetry.proto.collector.trace.v1;\n\
         message ExportTraceServiceRequest {}\nmessage ExportTraceServiceResponse {}\n\
         service TraceService {\n  rpc Export(ExportTraceServiceRequest) returns \
         (ExportTraceServiceResponse) {}\n}\n",
    )?;
    let fds = protox::Compiler::new([stub])?
        .include_imports(true)
        .open_files(["opentelemetry/proto/collector/trace/v1/trace_service.proto"])?
        .file_descriptor_set();
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .build_transport(false)
        .codec_path("crate::connectors::otlp::RawCodec")
        .extern_path(
            ".opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest",
            "::bytes::Bytes",
        )
        .extern_path(
            ".opentelemetry.proto.collector.trace.v1.ExportTraceServiceResponse",
            "::opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse",
        )
        .compile_fds(fds)?;
    Ok(())
}
