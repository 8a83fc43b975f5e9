//! The `oermesh` command line. The library does the work; this turns arguments into
//! calls and results into lines for people and scripts.

mod cli;

fn main() -> std::process::ExitCode {
    cli::run()
}
