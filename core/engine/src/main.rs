//! The `trellis` binary; everything lives in the library so tests can drive it too.

#[global_allocator]
static ALLOCATOR: trellis_engine::Allocator = trellis_engine::Allocator;

fn main() -> std::process::ExitCode {
    trellis_engine::cli::main()
}
