//! The `conveyor` binary: the command line with the built-in handlers.

fn main() -> std::process::ExitCode {
    conveyor::main_with(conveyor::Registry::builtin())
}
