//! The `twistctl` binary: everything is in the library; this maps its result to the exit
//! status.
fn main() {
    std::process::exit(twistctl::main_with_args(std::env::args_os()));
}
